"""One of each small thing, shared by both families: readable names, the vocabulary rule and id remapping, the
prompt-template mechanism, and templated captions served from the data side."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.data import DefectDataModule, MVTecReader
from common.data.captions import caption_for
from common.data.vocabulary import id_mapping, normalize_vocabulary, readable, remap_ids
from common.encoders import TinyText
from common.prompts import fill_templates, prompt_ensemble


def test_one_readable_for_captions_prompts_and_lexicons() -> None:
    from clipmdc.prompts import PromptBank
    from diffdefect.stage2.classifier import class_phrase, default_lexicon

    assert readable("Broken_Large") == readable("broken-large ") == "broken large"
    assert readable("metal__nut") == "metal nut"
    # CLIP-MDC's prompts, stage 2's class phrases and lexicon, and the captions all spell a name the same way
    assert "a photo of a metal nut with broken large." in PromptBank().class_prompts("Broken_Large", "Metal_Nut")
    assert class_phrase("Broken_Large") == "broken large"
    assert default_lexicon(["good", "Broken_Large"])["broken large"] == "Broken_Large"


def test_vocabulary_rule_and_id_remapping() -> None:
    assert normalize_vocabulary(["scratch", "hole", "scratch"]) == ["good", "scratch", "hole"]
    with pytest.raises(ValueError, match="first"):
        normalize_vocabulary(["scratch", "good"])
    mapping = id_mapping(["good", "crack", "stain"], ["good", "stain", "crack", "rust"])
    assert mapping.tolist() == [0, 2, 1]
    ids = torch.tensor([[0, 1, 2, -1]])
    assert remap_ids(ids, mapping).tolist() == [[0, 2, 1, -1]]
    assert remap_ids(ids, None) is ids
    assert id_mapping(["good", "dent"], ["good"]).tolist() == [0, -1]


def test_one_prompt_mechanism_for_both_families() -> None:
    from clipmdc.model import CLIPMDC
    from common.encoders import TimmImage
    from diffdefect.stage2.classifier import TEMPLATES, OpenVocabClassifier, class_prompts

    assert fill_templates(["a {}.", "the {}!"], ["x", "y"]) == ["a x.", "the x!", "a y.", "the y!"]
    text = TinyText(32)
    groups = [["a photo of a scratch.", "a scratch."], ["a dent."]]
    emb = prompt_ensemble(text, groups)
    manual = torch.stack([torch.nn.functional.normalize(text.encode(g).mean(0), dim=-1) for g in groups])
    torch.testing.assert_close(emb, manual)
    with torch.inference_mode():
        assert not prompt_ensemble(text, groups).is_inference()  # usable in training later
    # stage 2: a class embedding is the ensemble of its filled templates
    clf = OpenVocabClassifier(32, text)
    assert class_prompts("scratch") == fill_templates(TEMPLATES, ["linear scratch"])
    torch.testing.assert_close(clf.encode_names(["scratch"]), prompt_ensemble(text, [class_prompts("scratch")]))
    # CLIP-MDC: the same ensemble over its prompt bank
    model = CLIPMDC(TimmImage("test_vit", layers=(1,), model_kwargs={"dynamic_img_size": True}), text,
                    defect_types=["good", "scratch"], object_names=["plate"], adapter_hidden=8, decoder_width=8)
    model.embed_vocabulary()
    torch.testing.assert_close(model.class_text[0], prompt_ensemble(text, model.prompts.per_class[0]))


def test_templated_captions_come_from_the_data_side(mvtec_root: Path) -> None:
    kw = {"image_size": 32, "batch_size": 6, "num_workers": 0, "split": "random", "augment": "none"}
    given = DefectDataModule(MVTecReader(mvtec_root), **kw)
    templated = DefectDataModule(MVTecReader(mvtec_root), captions="templated", **kw)
    assert all(c is None for c in next(iter(given.test_dataloader())).caption)
    ds = templated.dataset("test")
    for i in range(len(ds)):
        item, rec = ds[i], ds.records[i]
        mask = item["mask"][0].numpy() > 0.5
        assert item["caption"] == caption_for(rec, mask).text
        assert ("free of defects" in item["caption"] or "No defect" in item["caption"]) == (not rec.is_anomalous)
    with pytest.raises(ValueError, match="captions"):
        DefectDataModule(MVTecReader(mvtec_root), captions="invented")
