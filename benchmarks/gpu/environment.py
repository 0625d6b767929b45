"""Part ``environment``: what the machine is, and its two ceilings measured in the script.

* dense bf16 matrix product ``n x n x n`` on random data (``2 n^3`` FLOPs), CUDA events, median of several
  timed runs: the peak that MFU is taken against;
* device-to-device copy of a large random buffer: bandwidth = bytes read + bytes written over time.
"""

from __future__ import annotations

import importlib.metadata
import platform
import statistics
import subprocess
from typing import Any

import torch

from benchmarks.gpu.runner import Clock, cuda_timer

PACKAGES = ("torch", "lightning", "pytorch-lightning", "torchmetrics", "timm", "transformers", "diffusers",
            "open_clip_torch", "jsonargparse", "albumentations", "numpy", "triton", "defectfm")


def driver_version() -> str | None:
    """The NVIDIA driver version (``nvidia-smi``), or ``None``."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def matmul_tflops(device: torch.device, n: int, iters: int, dtype: torch.dtype, repeats: int = 5) -> dict[str, Any]:
    """Median TFLOP/s of ``iters`` back-to-back ``n x n x n`` products on random data, over ``repeats`` runs."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    c = torch.empty(n, n, device=device, dtype=dtype)
    timed = cuda_timer(device)
    timed(lambda: torch.matmul(a, b, out=c), 2)  # warm-up: library handles, kernel selection
    runs = [timed(lambda: torch.matmul(a, b, out=c), iters) for _ in range(repeats)]
    if not torch.isfinite(c.float()).all():
        raise RuntimeError("the matrix product gave non-finite values")
    t = statistics.median(runs)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "tflops": 2 * n**3 / t / 1e12,
            "ms_per_product": t * 1e3, "runs_tflops": [2 * n**3 / r / 1e12 for r in runs]}


def copy_bandwidth(device: torch.device, mib: int, iters: int = 10, repeats: int = 5) -> dict[str, Any]:
    """Median device-to-device copy bandwidth (GB/s, bytes read + written) of a random ``mib`` MiB buffer."""
    n = mib * 2**20 // 4
    src = torch.randn(n, device=device, generator=torch.Generator(device=device).manual_seed(1))
    dst = torch.empty_like(src)
    timed = cuda_timer(device)
    timed(lambda: dst.copy_(src), 2)
    runs = [timed(lambda: dst.copy_(src), iters) for _ in range(repeats)]
    if not torch.equal(dst[:1000], src[:1000]):
        raise RuntimeError("the copy is wrong")
    t = statistics.median(runs)
    return {"mib": mib, "gb_per_s": 2 * src.numel() * 4 / t / 1e9, "ms_per_copy": t * 1e3}


def run(s: Any, clock: Clock, reports: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(s.device)
    cuda = device.type == "cuda"
    if s.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch (use --dry on a machine without a GPU)")
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "driver": driver_version() if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "versions": versions(),
    }
    if cuda:
        p = torch.cuda.get_device_properties(device)
        out |= {"capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                "multiprocessors": p.multi_processor_count}
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 products on this CPU are emulated, not a ceiling
    out["matmul"] = matmul_tflops(device, s.matmul_n, s.matmul_iters, dtype)
    out["copy"] = copy_bandwidth(device, s.copy_mib)
    return out
