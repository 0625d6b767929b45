"""Stage-1 training throughput: samples/s per GPU and model FLOPs utilisation (MFU).

On CUDA: the full 860M ``sd15`` U-Net at 512x512 (64x64 latents) trained on precomputed latents (no VAE or
text encoder in the step), bf16 autocast, SDPA attention, channels-last, fused AdamW, for every combination of
``torch.compile`` on/off and gradient checkpointing on/off. Goal: >= 175 samples/s on one H100.
On CPU (tests, ``--quick``): the tiny preset, so the script itself is exercised.

FLOPs are counted, not assumed: ``torch.utils.flop_counter`` on the U-Net built on the meta device (no memory,
no compute). With SD's 77-token context the forward is about 0.68 TFLOPs per 512-px sample (the figure usually
quoted); the paper's one-token context makes cross-attention negligible. A training step is counted as 3x the
forward (backward = 2x); the recomputation of gradient checkpointing is not counted (MFU convention). MFU =
counted FLOPs per second / the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOPs; ``--peak-tflops`` overrides).

    python -m benchmarks.stage1 [--quick] [--batch-size 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks._common import print_table, write_results

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}
GOAL_H100 = 175.0


def forward_flops(preset: str, batch: int, context_len: int, context_dim: int, latent: int) -> int:
    """FLOPs of one U-Net forward, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffdefect.stage1.unet import build_unet

    unet = build_unet(preset, device="meta")
    with torch.device("meta"):
        z = torch.empty(batch, 4, latent, latent)
        t = torch.zeros(batch, dtype=torch.long)
        ctx = torch.empty(batch, context_len, context_dim)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(z, t, encoder_hidden_states=ctx)
    return int(counter.get_total_flops())


def peak_tflops(name: str | None, override: float | None) -> float | None:
    if override:
        return override
    if not name:
        return None
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def build_model(preset: str, device: torch.device) -> Any:
    from diffdefect import DiffusionUNet, ImplicitCaptioner, Stage1Model

    unet = DiffusionUNet(preset)
    d = unet.context_dim
    captioner = ImplicitCaptioner(in_dim=512 if preset == "sd15" else 64, out_dim=d, hidden_dim=256 if preset == "sd15" else 32)
    return Stage1Model(unet, captioner=captioner, scaling_factor=0.18215).to(device)  # latent inputs, SD's VAE scale


def make_inputs(model: Any, batch: int, device: torch.device, seed: int = 0) -> Any:
    """Random precomputed inputs (latent moments, text and image embeddings) for ``batch`` samples."""
    from diffdefect import Stage1Inputs

    latent = model.unet.sample_size
    g = torch.Generator(device=device).manual_seed(seed)
    return Stage1Inputs(
        latent_moments=torch.randn(batch, 8, latent, latent, device=device, generator=g),
        text=torch.randn(batch, model.context_dim, device=device, generator=g),
        has_text=torch.ones(batch, dtype=torch.bool, device=device),
        image_embedding=torch.randn(batch, model.captioner.in_dim, device=device, generator=g),
    )


def make_step(model: Any, optimizer: torch.optim.Optimizer, inputs: Any, device: torch.device) -> Callable[[], None]:
    """One training step of the real Stage1Model/Stage1Loss on ``inputs`` (bf16 autocast on CUDA)."""
    from diffdefect import Stage1Loss

    loss_fn = Stage1Loss()
    g = torch.Generator(device=device).manual_seed(0)
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            terms = loss_fn(model(inputs, g))
        terms["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(preset: str, batch: int, steps: int, warmup: int, compile_: bool, checkpointing: bool,
            device: torch.device) -> dict[str, Any]:
    """Times ``steps`` optimizer steps of the real Stage1Model/Stage1Loss on precomputed inputs."""
    torch.manual_seed(0)
    model = build_model(preset, device)
    model.set_gradient_checkpointing(checkpointing)
    cuda = device.type == "cuda"
    if cuda:
        model.set_channels_last(True)
    if compile_:
        model.unet.compile()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, fused=cuda)
    step = make_step(model, opt, make_inputs(model, batch, device), device)
    model.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"seconds_per_step": dt / steps, "samples_per_s": batch * steps / dt,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stage1", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few steps (CPU smoke run)")
    p.add_argument("--batch-size", type=int, default=None, help="per-GPU batch (default 32 on CUDA, 4 on CPU)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile configurations")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = "sd15" if cuda else "tiny"
    batch = a.batch_size or (32 if cuda else 4)
    steps = a.steps or (3 if a.quick else (20 if cuda else 10))
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else (5 if cuda else 2))
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    from diffdefect.stage1.unet import build_unet, count_parameters, unet_config

    cfg = unet_config(preset)
    latent, dim = cfg["sample_size"], cfg["cross_attention_dim"]
    fwd_token = forward_flops(preset, 1, 1, dim, latent)
    fwd_seq77 = forward_flops(preset, 1, 77, dim, latent)
    step_flops = 3 * fwd_token  # per sample, the paper's one-token context
    gpu = torch.cuda.get_device_name(0) if cuda else None
    peak = peak_tflops(gpu, a.peak_tflops)
    compile_opts = [False] if (a.no_compile or not cuda) else [False, True]
    rows, results = [], []
    for compile_, ckpt in itertools.product(compile_opts, [False, True]):
        try:
            r = measure(preset, batch, steps, warmup, compile_, ckpt, device)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        except torch.OutOfMemoryError:
            r = {"seconds_per_step": None, "samples_per_s": None, "peak_mem_gib": None, "error": "out of memory"}
            torch.cuda.empty_cache()
        sps = r["samples_per_s"]
        tflops = sps * step_flops / 1e12 if sps else None
        r |= {"compile": compile_, "gradient_checkpointing": ckpt, "achieved_tflops": tflops,
              "mfu": (tflops / peak) if (tflops and peak) else None}
        results.append(r)
        rows.append([str(compile_), str(ckpt), batch, sps or "OOM", tflops or "-", r["mfu"] if r["mfu"] else "-",
                     r["peak_mem_gib"] if r["peak_mem_gib"] else "-"])
    best = max((r["samples_per_s"] or 0.0) for r in results)
    payload = {
        "config": {"preset": preset, "device": gpu or "cpu", "batch_size_per_device": batch, "steps": steps,
                   "warmup": warmup, "latent": f"4x{latent}x{latent}", "image_px": latent * 8,
                   "precision": "bf16-mixed" if cuda else "fp32", "attention": "SDPA", "channels_last": cuda,
                   "data": "precomputed latents (in memory)", "quick": a.quick,
                   "unet_parameters": count_parameters(build_unet(preset, device="meta"))},
        "flops": {"forward_per_sample_one_token": fwd_token, "forward_per_sample_77_tokens": fwd_seq77,
                  "train_step_per_sample": step_flops, "peak_bf16_tflops": peak},
        "results": results,
        "best_samples_per_s": best,
        "goal": {"h100_samples_per_s": GOAL_H100, "met": (best >= GOAL_H100) if (gpu and "H100" in gpu) else None},
        "notes": [] if cuda else ["no CUDA device: tiny preset on CPU (exercises the script; not the 860M figures)"],
    }
    path = write_results("stage1_quick" if a.quick else "stage1", payload)
    print_table(f"stage-1 training throughput ({preset}, {gpu or 'cpu'}, batch {batch}/device) -> {path.name}",
                ["compile", "grad_ckpt", "batch", "samples/s", "TFLOP/s", "MFU", "peak GiB"], rows)
    print(f"forward FLOPs/sample: {fwd_token / 1e9:.4g} G (1-token context), {fwd_seq77 / 1e9:.4g} G (77 tokens)")
    return payload


if __name__ == "__main__":
    main()
