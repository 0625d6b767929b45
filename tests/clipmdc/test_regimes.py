"""Regimes: what the loss may see of a training batch; Perlin pseudo-masks."""

from __future__ import annotations

import pytest
import torch

from clipmdc.regimes import prepare_training_batch, remap_type_ids
from common.synthesis.generator import PerlinAnomalyGenerator
from tests.clipmdc.helpers import make_batch


def test_supervised_without_synthesis_is_unchanged() -> None:
    batch = make_batch(4, 32)
    out = prepare_training_batch(batch, "supervised")
    for name in ("image", "mask", "has_mask", "label", "defect_type_id", "class_mask"):
        assert torch.equal(getattr(out, name), getattr(batch, name)), name


def test_weakly_supervised_drops_real_pixel_labels() -> None:
    batch = make_batch(4, 32)
    out = prepare_training_batch(batch, "weakly_supervised")
    normal = batch.label == 0
    assert torch.equal(out.has_mask, normal)
    assert out.mask[~normal].sum() == 0
    assert (out.class_mask[~normal] == -1).all() and (out.class_mask[normal] == 0).all()
    assert torch.equal(out.label, batch.label)  # image labels kept
    assert torch.equal(batch.has_mask, torch.ones(4, dtype=torch.bool))  # input untouched


def test_normal_only_ignores_real_anomalies() -> None:
    batch = make_batch(4, 32)
    out = prepare_training_batch(batch, "normal_only")
    anomalous = batch.label == 1
    assert (out.label[anomalous] == -1).all() and (out.defect_type_id[anomalous] == -1).all()
    assert not out.has_mask[anomalous].any()
    assert (out.label[~anomalous] == 0).all() and out.has_mask[~anomalous].all()


@pytest.mark.parametrize("regime", ["normal_only", "weakly_supervised", "supervised"])
def test_perlin_pseudo_masks_on_normal_samples(regime: str) -> None:
    batch = make_batch(8, 32)
    synthesis = PerlinAnomalyGenerator(normal_prob=0.0, seed=0)  # every normal sample gets an anomaly
    out = prepare_training_batch(
        batch, regime, synthesis, synthetic_type_id=2, generator=torch.Generator().manual_seed(0)
    )
    normal = batch.label == 0
    hit = normal & (out.mask.flatten(1).sum(1) > 0)
    assert hit.any()
    assert (out.label[hit] == 1).all() and out.has_mask[hit].all() and (out.defect_type_id[hit] == 2).all()
    assert ((out.class_mask[hit] == 2) == (out.mask[hit, 0] > 0)).all()
    assert not torch.equal(out.image[hit], batch.image[hit])
    untouched = ~normal
    assert torch.equal(out.image[untouched], batch.image[untouched])


def test_bad_regime_and_type_remap() -> None:
    batch = make_batch(4, 32)
    with pytest.raises(ValueError):
        prepare_training_batch(batch, "semi")
    # data vocabulary [good, type1, type2] -> model vocabulary without type1
    out = remap_type_ids(batch, torch.tensor([0, -1, 1]))
    assert out.defect_type_id.tolist() == [0, -1, 0, 1]
    assert set(out.class_mask.unique().tolist()) <= {-1, 0, 1}
