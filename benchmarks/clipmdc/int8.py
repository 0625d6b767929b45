"""The metric change of CLIP-MDC's INT8 ONNX file (:mod:`clipmdc.quantize`) on the benchmark's evaluation split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.clipmdc.data import evaluate
from benchmarks.clipmdc.settings import ANOMALY_KEYS, TYPE_KEYS

CALIBRATION_IMAGES = 32


def int8_metrics(
    module: Any, dm: Any, eval_loader: Any, image_size: Any, workdir: Path, torch_result: dict[str, Any],
    mode: str = "static",
) -> dict[str, Any]:
    """Exports ``module`` (float ONNX), quantises it (``mode``; static: calibrated on the first
    :data:`CALIBRATION_IMAGES` validation images, never test), and scores the INT8 file with the shared metric code.

    Returns:
        The INT8 metrics, their change against ``torch_result`` (PyTorch, ``trainer.test``), file sizes and timings.
    """
    from clipmdc.export import OnnxPredictor, export_module
    from clipmdc.quantize import quantize_onnx

    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src = export_module(module, workdir / "model.onnx", image_size)
    calibration, seen = [], 0
    for batch in dm.val_dataloader():
        if seen >= CALIBRATION_IMAGES:
            break
        calibration.append(batch.image[: CALIBRATION_IMAGES - seen].numpy())
        seen += len(calibration[-1])
    dst = quantize_onnx(src, workdir / f"model_int8_{mode}.onnx", mode, calibration if mode == "static" else None)
    quantize_s = time.perf_counter() - t0
    predictor = OnnxPredictor(dst)

    def predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = predictor(image.numpy())
        probs = torch.from_numpy(out["type_probs"]).clamp_min(1e-12)
        return torch.from_numpy(out["image_score"]), torch.from_numpy(out["anomaly_map"]), probs.log()

    metrics = evaluate(predict, eval_loader, num_types=len(module.model.defect_types))
    keys = [k for k in (*ANOMALY_KEYS, *TYPE_KEYS) if k in torch_result]
    return {
        "mode": mode,
        "calibration": f"first {seen} validation images" if mode == "static" else None,
        "metrics": {k: metrics[k] for k in keys},
        "change_vs_torch": {k: metrics[k] - torch_result[k] for k in keys},
        "float_mb": float(np.round(src.stat().st_size / 2**20, 2)),
        "int8_mb": float(np.round(dst.stat().st_size / 2**20, 2)),
        "quantize_s": quantize_s,
    }
