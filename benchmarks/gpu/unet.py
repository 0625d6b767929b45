"""Parts ``stage1_unet`` and ``profile``: training throughput of the stage-1 U-Net on precomputed latents.

The model, inputs and step are :mod:`benchmarks.stage1`'s (the real ``Stage1Model`` + ``Stage1Loss`` + AdamW,
bf16 autocast, SDPA attention, channels-last on CUDA); FLOPs are counted there on the meta device (a training
step = 3 forwards, recomputation not counted). MFU is taken against the bf16 matrix-product peak measured by
the ``environment`` part (the datasheet figure when that part did not run).

Order (the deadline drops what is left): eager without / with gradient checkpointing, the largest per-GPU batch
that fits (bounded search, eager, one step per size), then ``torch.compile`` without / with checkpointing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.gpu.runner import Clock, cuda_timer, is_oom, release_memory
from benchmarks.gpu.settings import GOAL_STAGE1_SAMPLES_PER_S
from benchmarks.stage1 import build_model, forward_flops, make_inputs, make_step, peak_tflops

EAGER_ESTIMATE_S = {True: 25.0, False: 4.0}  # seconds a variant needs, GPU / CPU: checked against the budget
COMPILE_ESTIMATE_S = {True: 80.0, False: 15.0}


def _prepare(s: Any, device: torch.device) -> tuple[Any, torch.optim.Optimizer]:
    torch.manual_seed(0)
    with torch.device(device):  # random init directly on the GPU: seconds instead of a minute on the CPU
        model = build_model(s.unet_preset, device)
    cuda = device.type == "cuda"
    if cuda:
        model.set_channels_last(True)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, fused=cuda)
    return model, opt


def _time(step: Callable[[], None], s: Any, device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step()  # first step: allocation, cuDNN autotuning, compilation
    if cuda:
        torch.cuda.synchronize(device)
    first = time.perf_counter() - t0
    for _ in range(s.unet_warmup - 1):
        step()
    sec = cuda_timer(device)(step, s.unet_steps)
    return {"first_step_s": first, "seconds_per_step": sec, "samples_per_s": s.unet_batch / sec,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


def largest_batch(model: Any, opt: torch.optim.Optimizer, sizes: list[int], device: torch.device, clock: Clock,
                  estimate_s: float) -> dict[str, Any]:
    """One training step at each size in ``sizes`` (increasing) until one does not fit or time runs out."""
    fits, failed, skipped = [], None, []
    for b in sizes:
        if not clock.allows(estimate_s * b / sizes[0]):
            skipped.append(b)
            continue
        try:
            make_step(model, opt, make_inputs(model, b, device), device)()
            fits.append(b)
        except Exception as e:
            if not is_oom(e):
                raise
            failed = b
        opt.zero_grad(set_to_none=True)
        release_memory()  # outside `except`: the traceback's frames hold the failed step's activations
        if failed is not None:
            break
    return {"fits": fits, "largest_fitting": max(fits) if fits else None, "first_out_of_memory": failed,
            "skipped_for_time": skipped}


def run(s: Any, clock: Clock, reports: dict[str, Any]) -> dict[str, Any]:
    from diffdefect.stage1.unet import count_parameters, unet_config

    device = torch.device(s.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cfg = unet_config(s.unet_preset)
    latent, dim = cfg["sample_size"], cfg["cross_attention_dim"]
    step_flops = 3 * forward_flops(s.unet_preset, 1, 1, dim, latent)
    env = reports.get("environment")
    measured = env.result.get("matmul", {}).get("tflops") if env is not None and env.status == "ok" else None
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = measured or peak_tflops(name, None)
    model, opt = _prepare(s, device)
    out: dict[str, Any] = {
        "preset": s.unet_preset, "parameters": count_parameters(model.unet), "image_px": latent * 8,
        "latent": f"4x{latent}x{latent}", "batch_per_gpu": s.unet_batch, "steps": s.unet_steps,
        "warmup": s.unet_warmup, "precision": "bf16 autocast" if cuda else "fp32", "attention": "SDPA",
        "channels_last": cuda, "optimizer": "AdamW" + (" fused" if cuda else ""),
        "flops_per_sample_step": step_flops, "peak_tflops": peak,
        "peak_source": "measured (environment part)" if measured else "datasheet", "variants": [], "skipped": [],
    }
    inputs = make_inputs(model, s.unet_batch, device)

    def variant(compiled: bool, ckpt: bool) -> None:
        est = (COMPILE_ESTIMATE_S if compiled else EAGER_ESTIMATE_S)[cuda]
        tag = f"compile={compiled}, checkpointing={ckpt}"
        if not clock.allows(est):
            out["skipped"].append(tag)
            return
        model.set_gradient_checkpointing(ckpt)
        row: dict[str, Any] = {"compile": compiled, "gradient_checkpointing": ckpt}
        try:
            row |= _time(make_step(model, opt, inputs, device), s, device)
            tflops = row["samples_per_s"] * step_flops / 1e12
            row |= {"achieved_tflops": tflops, "mfu": tflops / peak if peak else None}
        except Exception as e:  # an OOM or a compile failure of one variant: the others still run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if "error" in row:
            opt.zero_grad(set_to_none=True)
            release_memory()
        out["variants"].append(row)

    for ckpt in s.checkpointing_options:
        variant(False, ckpt)
    out["largest_batch"] = {}
    for mode, sizes in s.batch_search.items():
        model.set_gradient_checkpointing(mode == "checkpointing")
        out["largest_batch"][mode] = largest_batch(model, opt, sizes, device, clock,
                                                   EAGER_ESTIMATE_S[cuda] / 2)
    if True in s.compile_options:
        model.unet.compile(backend=s.compile_backend)
        out["compile_backend"] = s.compile_backend
        for ckpt in s.checkpointing_options:
            if ckpt and not s.compile_with_checkpointing:
                continue
            variant(True, ckpt)
    ok = [r for r in out["variants"] if "samples_per_s" in r]
    best = max(ok, key=lambda r: r["samples_per_s"]) if ok else None
    out["best"] = best
    h100_class = cuda and any(k in name for k in ("H100", "H200", "GH200"))
    out["goal"] = {"samples_per_s": GOAL_STAGE1_SAMPLES_PER_S,
                   "met": (best["samples_per_s"] >= GOAL_STAGE1_SAMPLES_PER_S) if (best and h100_class) else None,
                   "note": None if h100_class else f"device {name} is not H100-class: goal not judged"}
    return out


def profile(s: Any, clock: Clock, reports: dict[str, Any]) -> dict[str, Any]:
    """Where a stage-1 step's time goes: ``torch.profiler`` over a few eager steps, device time per category."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device(s.device)
    cuda = device.type == "cuda"
    model, opt = _prepare(s, device)
    step = make_step(model, opt, make_inputs(model, s.unet_batch, device), device)
    for _ in range(1 if s.dry else 2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(s.profile_steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    from torch.autograd import DeviceType

    rows = []  # self time of each kernel (GPU) or op (CPU): nothing counted twice
    for e in prof.key_averages():
        if cuda:
            if getattr(e, "device_type", None) != DeviceType.CUDA:
                continue
            us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        else:
            us = e.self_cpu_time_total
        rows.append((e.key, float(us)))
    rows.sort(key=lambda kv: -kv[1])
    cats = {"attention": ("attention", "flash", "sdpa", "efficient_attention", "fmha"),
            "convolution": ("conv", "cudnn", "implicit_gemm", "sm90_xmma"), "matmul": ("gemm", "mm", "matmul",
                                                                                      "linear", "nvjet"),
            "optimizer": ("adam", "foreach", "multi_tensor"), "normalization": ("norm",)}
    split = dict.fromkeys([*cats, "other"], 0.0)
    for key, us in rows:
        low = key.lower()
        cat = next((c for c, words in cats.items() if any(w in low for w in words)), "other")
        split[cat] += us / 1e3
    total = sum(split.values()) or 1.0
    return {"steps": s.profile_steps, "batch": s.unet_batch, "time_ms_by_category": split,
            "fraction_by_category": {k: v / total for k, v in split.items()},
            "top": [{"name": k[:120], "ms": us / 1e3} for k, us in rows[:20]]}
