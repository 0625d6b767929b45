"""Decisions of a trained CLIP-MDC for :mod:`benchmarks.clipmdc`: threshold calibration on the validation split,
and whether the exported ONNX file decides (and draws regions) as PyTorch does.

* :func:`calibrate` runs ``trainer.validate`` (what ``lightning fit`` does after every epoch), which calibrates the
  module's thresholds (:mod:`common.calibration`): F1-optimal on the validation split with its defects, or, for
  ``normal_only`` (a user with no defective image), at the target false-alarm rate on its normal images only.
* :func:`onnx_agreement` exports the module (:func:`clipmdc.export.export_module`, thresholds in the metadata),
  runs onnxruntime on the test images (the same tensors PyTorch gets) and compares image decisions, regions
  (:func:`clipmdc.explain.explain_probabilities` on both outputs) and the raw outputs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _trainer() -> Any:
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


def calibrate(module: Any, dm: Any, normal_only: bool) -> dict[str, Any]:
    """Calibrates ``module``'s thresholds on ``dm``'s validation split (its normal images only with
    ``normal_only``); returns the thresholds and what the split held."""
    from torch.utils.data import DataLoader, Subset

    from common.data.dataset import collate_samples

    t0 = time.perf_counter()
    dataset = dm.dataset("val")
    keep = [i for i, r in enumerate(dataset.records) if not (normal_only and r.is_anomalous)]
    loader = DataLoader(Subset(dataset, keep), batch_size=dm.eval_batch_size, shuffle=False,
                        collate_fn=collate_samples)
    _trainer().validate(module, dataloaders=loader, verbose=False)
    anomalous = sum(bool(dataset.records[i].is_anomalous) for i in keep)
    return {
        **module.decision_thresholds(),
        "calibration_split": "val (normal images only)" if normal_only else "val",
        "calibration_images": {"normal": len(keep) - anomalous, "anomalous": anomalous},
        "calibration_s": time.perf_counter() - t0,
    }


def onnx_agreement(module: Any, loader: Any, image_size: int) -> dict[str, Any]:
    """Exports ``module`` to ONNX and compares onnxruntime with PyTorch on every image of ``loader``.

    Returns:
        ``decision_agreement`` (fraction of images with the same decision), ``region_agreement`` (identical
        region boxes and areas), ``region_agreement_1px`` (the same regions up to one pixel at their borders,
        :func:`clipmdc.explain.regions_agree`), ``max_abs_diff_map`` / ``max_abs_diff_score`` (probabilities), counts and timings.
    """
    from clipmdc.explain import explain_probabilities, regions_agree
    from clipmdc.export import OnnxPredictor, export_module

    module.eval()
    thresholds = module.decision_thresholds()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_module(module, Path(tmp) / "model.onnx", image_size)
        export_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        predictor = OnnxPredictor(path)
        same_decision = same_regions = close_regions = n = 0
        diff_map = diff_score = 0.0
        with torch.inference_mode():
            for batch in loader:
                out = module.model(batch.image)
                ref = (out.anomaly_prob[:, 0].float().numpy(), out.image_prob.float().numpy(),
                       out.type_prob_image.float().numpy())
                got = predictor(batch.image.numpy())
                onnx = (got["anomaly_map"][:, 0], got["image_score"], got["type_probs"])
                diff_map = max(diff_map, float(np.abs(onnx[0] - ref[0]).max()))
                diff_score = max(diff_score, float(np.abs(onnx[1] - ref[1]).max()))
                imgs = np.zeros((len(batch), *ref[0].shape[1:], 3), np.uint8)  # pictures are not compared
                names = [""] * len(batch)
                a, b = (explain_probabilities(*o, predictor.defect_types, imgs, names, batch.path, **thresholds)
                        for o in (ref, onnx))
                for pa, pb in zip(a, b, strict=True):
                    ra, rb = pa.record, pb.record
                    same_decision += ra["is_anomalous"] == rb["is_anomalous"]
                    same_regions += [(r["box"], r["area"]) for r in ra["regions"]] == [
                        (r["box"], r["area"]) for r in rb["regions"]]
                    close_regions += regions_agree(ra["regions"], rb["regions"], pixels=1)
                    n += 1
    return {
        "images": n,
        "decision_agreement": same_decision / n if n else None,
        "region_agreement": same_regions / n if n else None,
        "region_agreement_1px": close_regions / n if n else None,
        "max_abs_diff_map": diff_map,
        "max_abs_diff_score": diff_score,
        "onnx_mb": size_mb,
        "export_s": export_s,
        "thresholds": thresholds,
    }


HEADER = ["regime", "mode", "target FAR", "image thr", "pixel thr", "test FAR", "test miss", "ONNX decisions",
          "ONNX regions", "ONNX regions 1px"]


def table_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per regime of CLIP-MDC's decisions on the test split (``-``: not measured)."""
    rows = []
    for regime, models in results.items():
        r = models.get("clipmdc") or {}
        d, o = r.get("decisions") or {}, r.get("onnx") or {}
        cells = [d.get("threshold_mode"), d.get("target_far"), d.get("image_threshold"), d.get("pixel_threshold"),
                 d.get("test_far"), d.get("test_miss_rate"), o.get("decision_agreement"), o.get("region_agreement"),
                 o.get("region_agreement_1px")]
        rows.append([regime] + ["-" if v is None or v != v else v for v in cells])
    return rows


def goal(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ONNX decides as PyTorch on every test image, in every regime (the false-alarm and miss rates at the
    calibrated thresholds are measurements, reported next to their target, not pass/fail)."""
    agreement = {regime: (models.get("clipmdc") or {}).get("onnx", {}).get("decision_agreement")
                 for regime, models in results.items()}
    failed = [f"{regime}: ONNX decision agreement {v}" for regime, v in agreement.items() if v != 1.0]
    return {
        "description": "onnxruntime gives the same image decision as PyTorch on every test image (calibrated "
        "thresholds from the ONNX metadata), in every regime",
        "met": not failed if agreement else None,
        "not_met": failed,
    }
