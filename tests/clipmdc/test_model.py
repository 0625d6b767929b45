"""CLIP-MDC network on the tiny preset: shapes, gradients, open vocabulary, factorised types."""

from __future__ import annotations

import time

import pytest
import torch

from clipmdc.loss import CLIPMDCLoss
from clipmdc.model import CLIPMDC
from clipmdc.output import CLIPMDCOutput
from clipmdc.presets import tiny
from common.encoders.image import OpenCLIPImage
from common.encoders.open_clip_loader import load_open_clip
from common.encoders.text import OpenCLIPText
from tests.clipmdc.helpers import make_batch

VOCAB = ["good", "scratch", "dent"]


@pytest.fixture
def model() -> CLIPMDC:
    torch.manual_seed(0)
    return tiny(defect_types=VOCAB, object_names=["bottle"])


def _check_output(out: CLIPMDCOutput, b: int, k1: int, hw: tuple[int, int]) -> None:
    assert out.anomaly_map.shape == (b, 1, *hw)
    assert out.type_map.shape == (b, k1, *hw)
    assert out.image_score.shape == out.topk_score.shape == (b,)
    assert out.type_logits.shape == (b, k1)
    assert out.embedding.shape[0] == b
    for name in ("anomaly_map", "type_map", "image_score", "topk_score", "type_logits", "embedding"):
        assert torch.isfinite(getattr(out, name)).all(), name
    assert len(out.defect_types) == k1


def test_tiny_forward_backward_fast_and_shapes(model: CLIPMDC) -> None:
    batch = make_batch(2, 64)
    start = time.perf_counter()
    fresh = tiny(defect_types=VOCAB)
    CLIPMDCLoss()(fresh(batch.image), batch)["total"].backward()
    assert time.perf_counter() - start < 5.0  # build + text embedding + forward + backward
    _check_output(model(batch.image), 2, 3, (64, 64))
    _check_output(model(torch.rand(1, 3, 48, 80)), 1, 3, (48, 80))


def test_same_output_type_in_train_and_eval(model: CLIPMDC) -> None:
    x = make_batch(2, 64).image
    model.train()
    a = model(x)
    model.eval()
    b = model(x)
    assert type(a) is type(b) is CLIPMDCOutput
    assert a.type_map.shape == b.type_map.shape


def test_gradients_reach_exactly_the_trainable_parameters(model: CLIPMDC) -> None:
    batch = make_batch(4, 64)
    model.train()
    loss = CLIPMDCLoss()(model(batch.image), batch)["total"]
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and frozen
    assert all(n.startswith(("image_encoder.", "text_encoder.")) for n in frozen)
    assert not any(n.startswith(("image_encoder.", "text_encoder.")) for n in trainable)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    zero = {n for n, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0}
    assert not zero


def test_state_dict_holds_only_trainable_state(model: CLIPMDC) -> None:
    keys = set(model.state_dict())
    assert not any(k.startswith(("image_encoder.", "text_encoder.")) for k in keys)
    assert "class_text" not in keys and "anomaly_text" not in keys  # derived from the vocabulary
    other = tiny(defect_types=["good", "x"])
    other.load_state_dict(model.state_dict(), strict=True)


def test_factorised_types_consistent_with_anomaly(model: CLIPMDC) -> None:
    out = model(make_batch(2, 64).image)
    assert torch.allclose(out.type_prob_image[:, 0], 1 - out.image_prob, atol=1e-5)
    assert torch.allclose(out.type_prob_image.sum(-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(
        out.type_prob[:, 0], 1 - out.anomaly_prob[:, 0], atol=0.02
    )  # up to bilinear upsampling


def test_open_vocabulary_changes_k_and_nothing_else(model: CLIPMDC) -> None:
    x = make_batch(2, 64).image
    model.eval()
    before = model(x)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_vocabulary(["good", "crack", "hole", "stain", "scratch", "burn"])
    after = model(x)
    _check_output(after, 2, 6, (64, 64))
    assert after.defect_types == ["good", "crack", "hole", "stain", "scratch", "burn"]
    for name in ("anomaly_map", "image_score", "topk_score"):  # anomaly outputs do not depend on type names
        assert torch.allclose(getattr(before, name), getattr(after, name), atol=1e-5), name
    assert not torch.allclose(before.type_logits[:, 1:2], after.type_logits[:, 1:2])
    assert torch.allclose(before.type_prob_image[:, 0], after.type_prob_image[:, 0], atol=1e-5)
    assert weights.keys() == model.state_dict().keys()
    assert all(
        torch.equal(v, model.state_dict()[k]) for k, v in weights.items()
    )  # trainable weights untouched


def test_closest_prompts_follow_the_vocabulary(model: CLIPMDC) -> None:
    text = model.text_encoder.encode(["a photo of a bottle with scratch.", "a photo of a flawless bottle."])
    assert model.closest_prompts(text) == [
        "a photo of a bottle with scratch.",
        "a photo of a flawless bottle.",
    ]
    out = model(torch.rand(2, 3, 32, 32))
    assert len(model.closest_prompts(out.embedding, object_id=torch.zeros(2, dtype=torch.long))) == 2
    model.set_vocabulary(["good", "hole"])
    assert "hole" in model.closest_prompts(model.text_encoder.encode(["a photo of a bottle with hole."]))[0]


def test_closest_prompt_never_contradicts_the_decision(model: CLIPMDC) -> None:
    """The reported failure: a normal image explained by "... with scratch" (and the reverse)."""
    text = model.text_encoder.encode(["a photo of a bottle with scratch.", "a photo of a flawless bottle."])
    assert model.closest_prompts(text, anomalous=torch.tensor([True, False])) == [
        "a photo of a bottle with scratch.",
        "a photo of a flawless bottle.",
    ]
    swapped = model.closest_prompts(text, anomalous=torch.tensor([False, True]))
    normal = {t for group in model.prompts.per_class[0][:1] for t in group}
    assert swapped[0] in normal and swapped[1] not in normal


def test_vocabulary_without_defects_and_per_object_prompts() -> None:
    only_good = tiny(defect_types=["good"])
    _check_output(only_good(torch.rand(2, 3, 32, 32)), 2, 1, (32, 32))
    per_object = tiny(defect_types=VOCAB, object_names=["bottle", "screw"], per_object_prompts=True)
    out = per_object(torch.rand(2, 3, 32, 32), object_id=torch.tensor([0, 1]))
    _check_output(out, 2, 3, (32, 32))
    with pytest.raises(IndexError):
        per_object(torch.rand(1, 3, 32, 32), object_id=torch.tensor([2]))


def test_without_backbone() -> None:
    _check_output(tiny(backbone=False)(torch.rand(2, 3, 64, 64)), 2, 2, (64, 64))


def test_open_clip_towers_in_the_model(tiny_clip_name: str) -> None:
    clip = load_open_clip(tiny_clip_name)
    model = CLIPMDC(
        image_encoder=OpenCLIPImage(tiny_clip_name, layers=(0, 1, 2), clip_model=clip),
        text_encoder=OpenCLIPText(tiny_clip_name, clip_model=clip),
        defect_types=VOCAB,
        decoder_width=16,
        adapter_hidden=16,
    )
    _check_output(model(torch.rand(2, 3, 64, 64)), 2, 3, (64, 64))
    counts = model.parameter_counts()
    assert counts["frozen"] == sum(p.numel() for p in clip.parameters()) - clip.logit_scale.numel()


def test_vocabulary_embedded_in_inference_mode_then_trained() -> None:
    model = tiny(defect_types=VOCAB, object_names=["bottle", "screw"], per_object_prompts=True)
    with torch.inference_mode():
        model(torch.rand(1, 3, 32, 32), object_id=torch.tensor([1]))  # lazily embeds the vocabulary here
    assert not model.class_text.is_inference()
    batch = make_batch(2, 32)
    CLIPMDCLoss()(model(batch.image, object_id=torch.tensor([0, 1])), batch)["total"].backward()


def test_gaussian_smooth_matches_scipy() -> None:
    from scipy.ndimage import gaussian_filter

    from clipmdc.decoder import gaussian_smooth

    x = torch.rand(2, 1, 48, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = gaussian_smooth(x, 3.0)
    ref = gaussian_filter(x.numpy(), sigma=(0, 0, 3.0, 3.0), mode="mirror", truncate=4.0)  # torch "reflect"
    assert got.shape == x.shape and abs(got.numpy() - ref).max() < 1e-10
    assert torch.equal(gaussian_smooth(x, 0.0), x)
    assert gaussian_smooth(torch.rand(1, 1, 5, 5), 4.0).shape == (1, 1, 5, 5)  # kernel cut to the map


def test_smoothing_changes_only_the_anomaly_map() -> None:
    torch.manual_seed(0)  # same seed for both: the frozen encoders are not in the state dict
    plain = tiny(defect_types=VOCAB).eval()
    torch.manual_seed(0)
    smooth = tiny(defect_types=VOCAB, smooth_sigma=2.0).eval()
    x = make_batch(2, 64).image
    with torch.no_grad():
        a, b = plain(x), smooth(x)
    assert torch.equal(a.image_score, b.image_score) and torch.equal(a.type_logits, b.type_logits)
    assert not torch.allclose(a.anomaly_map, b.anomaly_map)
    assert b.anomaly_map.std() < a.anomaly_map.std()
