"""Vocabulary entries with words (issue 17 point 2): an entry is a name or ``"name: description"``; the
description is what the text encoder embeds (inside each family's prompt templates), the name is what is
reported, matched to the data's names and stored in checkpoints. Adding a described name adds one class and
changes no other logit."""

from __future__ import annotations

import pytest
import torch

from common.data.vocabulary import join_vocabulary, normalize_vocabulary, parse_vocabulary, split_entry
from common.encoders import TimmImage, TinyText
from common.prompts import prompt_ensemble

FRAY = "fray: torn, frayed edge fibres"


def test_entries_parse_join_and_normalise() -> None:
    assert split_entry(FRAY) == ("fray", "torn, frayed edge fibres")
    assert split_entry(" scratch ") == ("scratch", None)
    names, described = parse_vocabulary(["good", "scratch", FRAY])
    assert names == ["good", "scratch", "fray"] and described == {"fray": "torn, frayed edge fibres"}
    assert join_vocabulary(names, described) == ["good", "scratch", FRAY]
    assert normalize_vocabulary(["scratch", FRAY, "fray"]) == ["good", "scratch", FRAY]  # one entry per name
    with pytest.raises(ValueError, match="first"):
        normalize_vocabulary([FRAY, "good"])
    with pytest.raises(ValueError, match="no name"):
        split_entry(": only words")
    with pytest.raises(ValueError, match="empty description"):
        split_entry("fray:")
    with pytest.raises(ValueError, match="two descriptions"):
        parse_vocabulary(["fray: torn", "fray: cut"])


def test_stage2_described_name_adds_one_class_and_changes_no_other_logit() -> None:
    from diffdefect.stage2.classifier import TEMPLATES, OpenVocabClassifier, class_prompts

    text = TinyText(32)
    clf = OpenVocabClassifier(32, text)
    names = ["good", "scratch", "hole"]
    base = clf.encode_names(names)
    grown = clf.encode_names([*names, "fray"], {"fray": "torn, frayed edge fibres"})
    torch.testing.assert_close(grown[:3], base)
    # the description, not the name, is embedded (in the same templates)
    words = prompt_ensemble(text, [[t.format("torn, frayed edge fibres") for t in TEMPLATES]])[0]
    torch.testing.assert_close(grown[3], words)
    assert not torch.allclose(grown[3], clf.encode_names(["fray"])[0])
    assert class_prompts("fray", description="torn fibres")[0] == TEMPLATES[0].format("torn fibres")
    z = torch.randn(2, 5, 32)
    a, b = clf(z, base), clf(z, grown)
    assert b.shape[-1] == a.shape[-1] + 1
    torch.testing.assert_close(b[..., :3], a[..., :3])  # the known classes
    torch.testing.assert_close(b[..., -1], a[..., -1])  # the no-object logit


def test_stage2_vocabulary_reports_names_and_stores_descriptions() -> None:
    from diffdefect.stage2.vocabulary import Stage2Vocabulary, checkpoint_names

    vocab = Stage2Vocabulary.build(["good", "scratch", "hole"], test_classes=["scratch", "hole", FRAY])
    assert vocab.names["train"] == ["good", "scratch", "hole"]  # a novel name never enters training
    assert vocab.names["test"] == ["good", "scratch", "hole", "fray"]
    assert vocab.descriptions == {"fray": "torn, frayed edge fibres"} and "fray" in vocab.words
    ckpt: dict = {}
    vocab.save(ckpt)
    assert ckpt["defectfm"]["vocabulary"]["defect_types"] == ["good", "scratch", "hole", "fray"]
    assert checkpoint_names(ckpt) == ["good", "scratch", "hole", FRAY]
    again = Stage2Vocabulary.build(["good", "scratch", "hole"], checkpoint_names=checkpoint_names(ckpt))
    assert again.names["test"] == vocab.names["test"] and again.descriptions == vocab.descriptions


def test_clipmdc_described_name_is_worded_and_reported_by_name() -> None:
    from clipmdc.model import CLIPMDC

    torch.manual_seed(0)
    model = CLIPMDC(TimmImage("test_vit", layers=(1,), model_kwargs={"dynamic_img_size": True}), TinyText(32),
                    defect_types=["good", "scratch", "hole"], object_names=["cloth"], adapter_hidden=8,
                    decoder_width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x)
        model.set_vocabulary(["good", "scratch", "hole", FRAY])
        b = model(x)
    assert model.defect_types == b.defect_types == ["good", "scratch", "hole", "fray"]
    assert model.vocabulary == ["good", "scratch", "hole", FRAY]
    fray_prompts = model.prompts.per_class[0][3]
    assert any("torn, frayed edge fibres" in p for p in fray_prompts) and not any("fray " in p for p in fray_prompts)
    torch.testing.assert_close(b.anomaly_map, a.anomaly_map)  # the anomaly evidence does not depend on names
    torch.testing.assert_close(b.image_score, a.image_score)
    # type log-probabilities of the known classes: normal unchanged, defects shifted by one constant per image
    # (the new class joins the softmax over defect types), so their order and ratios are unchanged
    torch.testing.assert_close(b.type_logits[:, 0], a.type_logits[:, 0])
    shift = b.type_logits[:, 1:3] - a.type_logits[:, 1:3]
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
