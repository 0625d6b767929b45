"""Settings of the CLIP-MDC benchmark: data root, regimes, metric keys and labels, full and quick sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATA_ROOT = REPO.parent / "shared" / "data" / "magnetic_tile"
REGIMES = ("supervised", "weakly_supervised", "normal_only")
ANOMALY_KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")
"""The anomaly metrics of the goal: I-AUROC, P-AUROC, AUPRO, AP_loc."""
EXTRA_KEYS = ("image_ap", "image_f1max")
TYPE_KEYS = ("type_accuracy", "type_macro_f1")
PEER_OF = {"supervised": "supersimplenet", "normal_only": "patchcore"}
LABELS = {
    "image_auroc": "I-AUROC",
    "pixel_auroc": "P-AUROC",
    "pixel_aupro": "AUPRO",
    "pixel_ap": "AP_loc",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "type_accuracy": "type acc",
    "type_macro_f1": "type mF1",
}

FULL: dict[str, Any] = {
    "image_size": 160,
    "epochs": 4,
    "batch_size": 16,
    "eval_batch_size": 32,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "per_class": None,
    "coreset_ratio": 0.01,
    "memory_regimes": REGIMES,
    # Initial weight of the memory term in the anomaly logit, per regime, chosen on the validation split
    # (--eval-split val): normal_only 32 (of 8/16/32/64: best P-AUROC, AP_loc, I-AUROC); supervised 1.
    "memory_weight": {"supervised": 1.0, "weakly_supervised": 8.0, "normal_only": 32.0},
    "latency_size": 256,
    "latency_batches": (1, 32),
    "latency_rounds": 5,
    "latency_iters": {1: 10, 32: 1},
}
QUICK: dict[str, Any] = {
    **FULL,
    "image_size": 96,  # SuperSimpleNet's Perlin noise needs a feature grid >= 17 (image >= 68)
    "epochs": 1,
    "batch_size": 8,
    "eval_batch_size": 16,
    "per_class": 10,
    "coreset_ratio": 0.1,
    "latency_size": 64,
    "latency_batches": (1, 4),
    "latency_rounds": 1,
    "latency_iters": {1: 2, 4: 1},
}
GPU_GOAL_MS = 3.3
LAYOUTS = ("nchw", "channels_last")


def log(msg: str) -> None:
    print(msg, flush=True)
