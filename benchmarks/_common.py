"""Shared helpers for benchmarks: machine description, result JSON, printed table.

Every benchmark writes ``benchmarks/results/<name>.json`` with the machine, package versions, the measured
figures and the ratios against the peer measured in the same run, then prints a plain table.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """Describes the machine and the versions of the packages a benchmark depends on."""
    import torch

    versions = {}
    for pkg in ("torch", "numpy", "scipy", "torchmetrics", "anomalib", "timm", "open_clip_torch", "diffusers"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def timeit(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Returns the best wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Writes ``payload`` plus machine info to ``benchmarks/results/<name>.json`` and returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=float) + "\n")
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Prints (and returns) a fixed-width text table; undefined values (NaN, e.g. an AUROC without normal images)
    print as ``-``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if v != v else f"{v:.4g}"
        return str(v)

    cells = [[fmt(h) for h in header]] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
