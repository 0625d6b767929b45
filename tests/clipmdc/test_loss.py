"""CLIP-MDC loss: named terms, finite, ~0 for perfect predictions, masking of missing labels."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from clipmdc.loss import DEFAULT_WEIGHTS, CLIPMDCLoss
from clipmdc.output import CLIPMDCOutput
from tests.clipmdc.helpers import make_batch

TERMS = {*DEFAULT_WEIGHTS, "total"}


def _perfect(batch, k1: int = 3, big: float = 30.0) -> CLIPMDCOutput:
    amap = (batch.mask * 2 - 1) * big  # (B, 1, H, W)
    type_map = F.one_hot(batch.class_mask.clamp(min=0), k1).permute(0, 3, 1, 2).float() * big
    type_logits = F.one_hot(batch.defect_type_id.clamp(min=0), k1).float() * big
    score = (batch.label.float() * 2 - 1) * big
    return CLIPMDCOutput(
        amap, type_map, score, score.clone(), type_logits, torch.zeros(len(batch), 8), ["good", "a", "b"]
    )


def _random(batch, k1: int = 3) -> CLIPMDCOutput:
    b, _, h, w = batch.mask.shape
    g = torch.Generator().manual_seed(0)
    return CLIPMDCOutput(
        torch.randn(b, 1, h, w, generator=g, requires_grad=True),
        torch.randn(b, k1, h, w, generator=g, requires_grad=True),
        torch.randn(b, generator=g, requires_grad=True),
        torch.randn(b, generator=g, requires_grad=True),
        torch.randn(b, k1, generator=g, requires_grad=True),
        torch.zeros(b, 8),
        ["good", "a", "b"],
    )


def test_terms_named_finite_and_weighted() -> None:
    batch = make_batch(4, 32)
    out = _random(batch)
    terms = CLIPMDCLoss()(out, batch)
    assert set(terms) == TERMS
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    assert all(terms[k] > 0 for k in DEFAULT_WEIGHTS)
    expected = sum(DEFAULT_WEIGHTS[k] * terms[k] for k in DEFAULT_WEIGHTS)
    assert torch.allclose(terms["total"], expected)
    terms["total"].backward()
    only_dice = CLIPMDCLoss({k: 0.0 for k in DEFAULT_WEIGHTS} | {"dice": 2.0})(out, batch)
    assert torch.allclose(only_dice["total"], 2 * only_dice["dice"])


def test_perfect_predictions_give_near_zero() -> None:
    batch = make_batch(4, 32)
    terms = CLIPMDCLoss()(_perfect(batch), batch)
    for k, v in terms.items():
        assert v < 1e-6, (k, float(v))


def test_missing_labels_are_ignored() -> None:
    batch = make_batch(4, 32)
    out = _random(batch)
    none = replace(
        batch,
        has_mask=torch.zeros(4, dtype=torch.bool),
        label=torch.full((4,), -1),
        defect_type_id=torch.full((4,), -1),
    )
    terms = CLIPMDCLoss()(out, none)
    assert all(float(v.detach()) == 0.0 for v in terms.values())
    terms["total"].backward()  # still a graph (DDP-safe)
    # pixel terms only from samples with masks: garbage in the masks of the others changes nothing
    half = replace(batch, has_mask=torch.tensor([True, True, False, False]))
    noisy = replace(half, mask=torch.cat([half.mask[:2], torch.ones_like(half.mask[2:])]))
    a, b = CLIPMDCLoss()(out, half), CLIPMDCLoss()(out, noisy)
    assert torch.equal(a["focal"], b["focal"]) and torch.equal(a["dice"], b["dice"])
    ignored = replace(batch, class_mask=torch.full_like(batch.class_mask, -1))
    assert float(CLIPMDCLoss()(out, ignored)["type_ce"].detach()) == 0.0


def test_validation_errors() -> None:
    with pytest.raises(ValueError):
        CLIPMDCLoss({"nonsense": 1.0})
    batch = make_batch(2, 32)
    with pytest.raises(ValueError, match="vocabulary"):
        CLIPMDCLoss()(_random(batch, k1=2), replace(batch, defect_type_id=torch.tensor([0, 5])))
