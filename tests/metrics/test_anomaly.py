"""Image/pixel AUROC, AP and F1-max against scikit-learn; binned vs exact; degenerate inputs; the factory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from common.metrics import (
    AUPRO,
    ImageAP,
    ImageAUROC,
    ImageF1Max,
    PixelAP,
    PixelAUROC,
    PixelF1Max,
    anomaly_metrics,
    format_metric,
)


def sk_f1_max(y: np.ndarray, s: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(f1.max())


SKLEARN = {"auroc": roc_auc_score, "ap": average_precision_score, "f1": sk_f1_max}
IMAGE = {"auroc": ImageAUROC, "ap": ImageAP, "f1": ImageF1Max}
PIXEL = {"auroc": PixelAUROC, "ap": PixelAP, "f1": PixelF1Max}


def feed(metric, preds, target, batches: int = 3):
    for p, t in zip(np.array_split(preds, batches), np.array_split(target, batches), strict=True):
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
    return float(metric.compute())


@pytest.mark.parametrize("name", ["auroc", "ap", "f1"])
@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_match_sklearn(name, ties):
    rng = np.random.default_rng(1)
    y = (rng.random(301) < 0.4).astype(np.int64)
    s = rng.random(301) + 0.7 * y
    if ties:
        s = np.round(s * 8) / 8  # many ties between normal and anomalous images
    ours = feed(IMAGE[name](), s, y)
    assert ours == pytest.approx(SKLEARN[name](y, s), abs=1e-6)


@pytest.mark.parametrize("name", ["auroc", "ap", "f1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_match_sklearn(name, seed, blob_maps):
    maps, masks = blob_maps(seed, quantize=64 if seed == 2 else None)
    ours = feed(PIXEL[name](), maps[:, None], masks[:, None].astype(np.uint8))  # (N, 1, H, W) accepted
    assert ours == pytest.approx(SKLEARN[name](masks.ravel(), maps.ravel()), abs=1e-6)


@pytest.mark.parametrize("name", ["auroc", "ap", "f1"])
def test_pixel_binned_within_1e3_of_exact(name, blob_maps):
    maps, masks = blob_maps(3, n=8, size=48)
    exact = feed(PIXEL[name](), maps, masks)
    binned = feed(PIXEL[name](mode="binned"), maps, masks)
    assert binned == pytest.approx(exact, abs=1e-3)
    assert exact != pytest.approx(0.5, abs=0.05)  # a real signal, not a trivially equal pair


@pytest.mark.parametrize("name", ["auroc", "ap", "f1"])
def test_binned_is_exact_on_bin_grid(name, blob_maps):
    """Scores at bin centres: binning loses nothing, so binned must equal scikit-learn."""
    bins = 200
    maps, masks = blob_maps(4)
    maps = ((np.floor(maps * bins) + 0.5) / bins).astype(np.float32)
    binned = feed(PIXEL[name](mode="binned", num_bins=bins), maps, masks)
    assert binned == pytest.approx(SKLEARN[name](masks.ravel(), maps.ravel()), abs=1e-6)


def test_binned_with_sigmoid_and_range_match_exact(blob_maps):
    maps, masks = blob_maps(5)
    logits = np.log(maps + 1e-3) - np.log1p(-maps)  # unbounded scores
    exact = feed(PixelAUROC(), logits, masks)
    via_sigmoid = feed(PixelAUROC(mode="binned", sigmoid=True, num_bins=20_000), logits, masks)
    via_range = feed(
        PixelAUROC(mode="binned", score_range=(float(logits.min()), float(logits.max()))), logits, masks
    )
    assert via_sigmoid == pytest.approx(exact, abs=1e-3)
    assert via_range == pytest.approx(exact, abs=1e-3)


def test_binned_state_is_fixed_size(blob_maps):
    m = PixelAUROC(mode="binned", num_bins=500)
    maps, masks = blob_maps(6)
    for _ in range(5):
        m.update(torch.from_numpy(maps), torch.from_numpy(masks))
    assert m.hist_normal.shape == (500,) and m.hist_anomalous.shape == (500,)
    assert float(m.hist_normal.sum() + m.hist_anomalous.sum()) == 5 * maps.size


def test_out_of_range_scores_warn_in_binned_mode():
    m = PixelAUROC(mode="binned")
    with pytest.warns(UserWarning, match="score_range"):
        m.update(torch.tensor([[[2.0, -1.0], [0.5, 0.2]]]), torch.tensor([[[1, 0], [0, 1]]]))
    assert float(m.compute()) == pytest.approx(0.75)  # clamped to the end bins, order kept here


# ------------------------------------------------------------------------------------------ degenerate
@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_no_anomalous_pixel_is_undefined(mode):
    """Data without masks: only normal pixels. Undefined, so NaN, never 0.5 / 0.0 as if measured."""
    maps, masks = torch.rand(2, 8, 8), torch.zeros(2, 8, 8)
    for cls in (PixelAUROC, PixelAP, PixelF1Max):
        m = cls(mode=mode)
        m.update(maps, masks)
        with pytest.warns(UserWarning, match="undefined.*nan"):
            value = m.compute()
        assert torch.isnan(value) and value.dtype == torch.float32


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_only_anomalous(mode):
    maps, masks = torch.rand(2, 8, 8), torch.ones(2, 8, 8)
    m = PixelAUROC(mode=mode)
    m.update(maps, masks)
    with pytest.warns(UserWarning):
        assert torch.isnan(m.compute())
    for cls in (PixelAP, PixelF1Max):
        m = cls(mode=mode)
        m.update(maps, masks)
        assert float(m.compute()) == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_constant_predictions(mode):
    masks = torch.zeros(3, 10, 10)
    masks[:, 2:5, 2:5] = 1
    maps = torch.full((3, 10, 10), 0.3)
    p = float(masks.mean())
    expect = {PixelAUROC: 0.5, PixelAP: p, PixelF1Max: 2 * p / (1 + p)}
    for cls, value in expect.items():
        m = cls(mode=mode)
        m.update(maps, masks)
        assert float(m.compute()) == pytest.approx(value, abs=1e-6)


def test_image_one_class_and_empty_are_undefined():
    m = ImageAUROC()
    with pytest.warns(UserWarning):
        assert torch.isnan(m.compute())  # no update at all
    m.update(torch.tensor([0.1, 0.9]), torch.tensor([1, 1]))  # no normal image
    with pytest.warns(UserWarning):
        assert torch.isnan(m.compute())
    m = ImageAUROC()
    m.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 0]))  # no defective image
    with pytest.warns(UserWarning):
        assert torch.isnan(m.compute())
    ap = ImageAP()
    ap.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 0]))
    with pytest.warns(UserWarning):
        assert torch.isnan(ap.compute())


def test_collection_reports_undefined_metrics_as_nan_next_to_defined_ones():
    """What a LightningModule logs on data without masks: the image metrics are measured, the pixel ones NaN."""
    coll = anomaly_metrics(mode="binned").clone(prefix="test/")
    coll.update(scores=torch.tensor([0.2, 0.8, 0.3, 0.9]), labels=torch.tensor([0, 1, 0, 1]),
                anomaly_maps=torch.rand(4, 8, 8), masks=torch.zeros(4, 8, 8))
    with pytest.warns(UserWarning):
        out = {k: float(v) for k, v in coll.compute().items()}
    assert out["test/image_auroc"] == 1.0
    assert all(math.isnan(out[f"test/pixel_{k}"]) for k in ("auroc", "ap", "aupro"))
    assert [format_metric(out[k]) for k in ("test/image_auroc", "test/pixel_auroc")] == ["1.0000", "-"]


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 8, 9\)"):
        PixelAUROC().update(torch.rand(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match=r"\(4,\).*\(5,\)"):
        ImageAUROC().update(torch.rand(4), torch.zeros(5))


def test_invalid_values_raise():
    with pytest.raises(ValueError, match="binary"):
        PixelAP().update(torch.rand(1, 4, 4), torch.full((1, 4, 4), 2))
    with pytest.raises(ValueError, match="NaN"):
        ImageAUROC().update(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="mode"):
        PixelAUROC(mode="approx")


# --------------------------------------------------------------------------------------------- factory
def test_factory_collection(blob_maps):
    maps, masks = blob_maps(7)
    scores = maps.reshape(len(maps), -1).max(1)
    labels = masks.reshape(len(masks), -1).any(1).astype(np.int64)
    coll = anomaly_metrics().clone(prefix="val/")
    for i in range(0, len(maps), 2):
        coll.update(
            scores=torch.from_numpy(scores[i : i + 2]),
            labels=torch.from_numpy(labels[i : i + 2]),
            anomaly_maps=torch.from_numpy(maps[i : i + 2]),
            masks=torch.from_numpy(masks[i : i + 2]),
        )
    out = coll.compute()
    assert set(out) == {
        f"val/{k}"
        for k in ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_aupro")
    }
    # one shared state for the pixel metrics, one for the image metrics
    assert sorted(sorted(g) for g in coll.compute_groups.values()) == [
        ["image_ap", "image_auroc", "image_f1max"],
        ["pixel_ap", "pixel_aupro", "pixel_auroc"],
    ]
    assert float(out["val/pixel_auroc"]) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6
    )
    assert float(out["val/image_ap"]) == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    single = AUPRO()
    single.update(torch.from_numpy(maps), torch.from_numpy(masks))
    assert float(out["val/pixel_aupro"]) == pytest.approx(float(single.compute()), abs=1e-7)
    binned = anomaly_metrics(prefix="test/", mode="binned")
    binned.update(
        scores=torch.from_numpy(scores),
        labels=torch.from_numpy(labels),
        anomaly_maps=torch.from_numpy(maps),
        masks=torch.from_numpy(masks),
    )
    res = binned.compute()
    for k in ("pixel_auroc", "pixel_ap", "pixel_aupro"):
        assert float(res[f"test/{k}"]) == pytest.approx(float(out[f"val/{k}"]), abs=1e-3)


@pytest.mark.parametrize("cls", [PixelAUROC, AUPRO])
def test_compute_never_reorders_the_state(cls, blob_maps):
    """compute() sorts a fresh concatenation in place; a tensor state (as after a DDP sync) is copied first."""
    maps, masks = (torch.from_numpy(a) for a in blob_maps(8))
    m = cls()
    m.update(maps, masks)
    first = float(m.compute())
    torch.testing.assert_close(m.scores[0], maps.reshape(-1))
    m.scores = torch.cat(m.scores)  # tensor state
    m.anomalous_scores = torch.cat(m.anomalous_scores)
    m._computed = None
    assert float(m.compute()) == first
    torch.testing.assert_close(m.scores, maps.reshape(-1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_cuda_matches_cpu(mode, blob_maps):
    maps, masks = (torch.from_numpy(a) for a in blob_maps(9))
    cpu, gpu = anomaly_metrics(mode=mode, image=False), anomaly_metrics(mode=mode, image=False).to("cuda")
    cpu.update(anomaly_maps=maps, masks=masks)
    gpu.update(anomaly_maps=maps.cuda(), masks=masks.cuda())
    out_cpu, out_gpu = cpu.compute(), gpu.compute()
    for k, v in out_cpu.items():
        assert out_gpu[k].device.type == "cuda"
        assert float(out_gpu[k]) == pytest.approx(float(v), abs=1e-6)
