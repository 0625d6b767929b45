"""AUPRO against a plain threshold loop with ``scipy.ndimage.label``; binned vs exact; degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from common.metrics import AUPRO, binned_aupro, exact_aupro

EIGHT = np.ones((3, 3), dtype=int)


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """The MVTec AD definition, written as plainly as possible: one pass per distinct threshold."""
    regions = []  # (map index, boolean region mask)
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, EIGHT)
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in sorted(np.unique(maps), reverse=True):
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        pros.append(np.mean([(pred[i] & r).sum() / r.sum() for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # interpolate linearly at the limit
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / fpr_limit


def run(maps, masks, batches: int = 2, **kwargs) -> float:
    m = AUPRO(**kwargs)
    for p, t in zip(np.array_split(maps, batches), np.array_split(masks, batches), strict=True):
        m.update(torch.from_numpy(p), torch.from_numpy(t))
    return float(m.compute())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_threshold_loop(seed, blob_maps):
    maps, masks = blob_maps(seed, n=5, size=32)
    comps = [ndimage.label(m, EIGHT)[1] for m in masks]
    assert sum(c >= 2 for c in comps) >= 2, comps  # several components per map
    ref = reference_aupro(maps, masks)
    assert 0.2 < ref < 0.99
    assert run(maps, masks) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_exact_matches_loop_with_ties_and_limits(fpr_limit, blob_maps):
    maps, masks = blob_maps(10, n=5, size=32, quantize=50)  # ties between normal and anomalous pixels
    assert run(maps, masks, batches=3, fpr_limit=fpr_limit) == pytest.approx(
        reference_aupro(maps, masks, fpr_limit), abs=1e-6
    )


def test_batching_and_channel_dim_do_not_change_result(blob_maps):
    maps, masks = blob_maps(11)
    one = run(maps, masks, batches=1)
    assert run(maps, masks, batches=len(maps)) == pytest.approx(one, abs=1e-7)
    assert run(maps[:, None], masks[:, None], batches=2) == pytest.approx(one, abs=1e-7)


def test_eight_connectivity():
    """A 2x2 block touching one pixel diagonally is one component of 5 pixels (4-connectivity: two)."""
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 0:2, 0:2] = True
    mask[0, 2, 2] = True
    maps = np.full((1, 6, 6), 0.5, dtype=np.float32)
    maps[mask] = 0.1
    maps[0, 2, 2] = 0.9  # only the diagonal pixel is detected before any false positive
    # 8-connectivity: PRO = 1/5 from FPR 0 to 1 -> AUPRO 0.2 (4-connectivity would give (0 + 1) / 2 = 0.5)
    assert run(maps, mask, batches=1) == pytest.approx(0.2, abs=1e-7)
    assert run(maps, mask, batches=1, mode="binned") == pytest.approx(0.2, abs=1e-7)


def test_binned_within_1e3_of_exact(blob_maps):
    maps, masks = blob_maps(12, n=8, size=48)
    exact = run(maps, masks)
    assert run(maps, masks, mode="binned") == pytest.approx(exact, abs=1e-3)
    assert run(maps, masks, mode="binned", num_bins=1000) == pytest.approx(exact, abs=1e-2)


def test_binned_is_exact_on_bin_grid(blob_maps):
    bins = 100
    maps, masks = blob_maps(13, n=5, size=32)
    maps = ((np.floor(maps * bins) + 0.5) / bins).astype(np.float32)
    assert run(maps, masks, mode="binned", num_bins=bins) == pytest.approx(
        reference_aupro(maps, masks), abs=1e-6
    )


def test_functional_forms_agree():
    rng = np.random.default_rng(3)
    normal = torch.from_numpy(rng.random(500))
    anomalous = torch.from_numpy(rng.random(40) * 0.5 + 0.5)
    weights = torch.full((40,), 1 / 20, dtype=torch.float64)  # two components of 20 pixels
    exact = exact_aupro(normal, anomalous, weights, 2, 0.3)
    edges = 1000
    h_n = torch.bincount((normal * edges).long(), minlength=edges).double()
    h_o = torch.bincount((anomalous * edges).long(), weights=weights, minlength=edges)
    assert binned_aupro(h_n, h_o, 2, 0.3) == pytest.approx(exact, abs=2e-3)


# ------------------------------------------------------------------------------------------ degenerate
@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_no_anomalous_pixel_is_undefined_with_warning(mode):
    m = AUPRO(mode=mode)
    m.update(torch.rand(3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.warns(UserWarning, match="undefined"):
        value = m.compute()
    assert torch.isnan(value)


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_all_anomalous_and_empty_are_undefined(mode):
    m = AUPRO(mode=mode)
    with pytest.warns(UserWarning):
        assert torch.isnan(m.compute())
    m.update(torch.rand(1, 8, 8), torch.ones(1, 8, 8))
    with pytest.warns(UserWarning):
        assert torch.isnan(m.compute())


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_constant_predictions_give_diagonal(mode):
    masks = torch.zeros(2, 12, 12)
    masks[0, 1:4, 1:4] = 1
    masks[1, 6:11, 2:4] = 1
    m = AUPRO(mode=mode)
    m.update(torch.full((2, 12, 12), 0.42), masks)
    assert float(m.compute()) == pytest.approx(0.15, abs=1e-7)  # area 0.5 * 0.3^2, divided by 0.3


def test_perfect_and_inverted_predictions(blob_maps):
    _, masks = blob_maps(14)
    perfect = masks.astype(np.float32)
    assert run(perfect, masks) == pytest.approx(1.0, abs=1e-7)
    assert run(1 - perfect, masks) == pytest.approx(0.0, abs=1e-7)


def test_validation_errors():
    with pytest.raises(ValueError, match="fpr_limit"):
        AUPRO(fpr_limit=0.0)
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\).*\(2, 8, 7\)"):
        AUPRO().update(torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 7))
    with pytest.raises(ValueError, match="binary"):
        AUPRO().update(torch.rand(2, 8, 8), torch.rand(2, 8, 8))
