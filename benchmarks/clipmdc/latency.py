"""CPU latency/throughput of the trained models side by side, and the GPU section."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.clipmdc.arms import clipmdc_model
from benchmarks.clipmdc.settings import GPU_GOAL_MS, LAYOUTS


# ---------------------------------------------------------------------------------------------------- latency
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    models: dict[str, Callable[[torch.Tensor], Any]],
    size: int,
    batches: Sequence[int],
    rounds: int,
    iters: dict[int, int],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> dict[str, dict[str, float]]:
    """Best-of-``rounds`` time per batch of each model, rounds interleaved across models.

    Returns:
        ``{model: {"b{n}_ms_per_batch", "b{n}_ms_per_image", "b{n}_images_per_s"}}`` per batch size ``n``.
    """
    device = device or torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    inputs = {}
    for b in batches:
        x = torch.rand(b, 3, size, size, generator=g).to(device=device, dtype=dtype)
        inputs[b] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    best = {name: dict.fromkeys(batches, math.inf) for name in models}
    with torch.inference_mode():
        for fn in models.values():  # warm-up (text embeddings, allocator, compilation)
            for b in batches:
                for _ in range(2 if b == 1 else 1):
                    fn(inputs[b])
        _sync(device)
        for _ in range(rounds):
            for b in batches:
                for name, fn in models.items():
                    n = iters.get(b, 1)
                    _sync(device)
                    t0 = time.perf_counter()
                    for _ in range(n):
                        fn(inputs[b])
                    _sync(device)
                    best[name][b] = min(best[name][b], (time.perf_counter() - t0) / n)
    out: dict[str, dict[str, float]] = {}
    for name in models:
        row = {}
        for b in batches:
            row[f"b{b}_ms_per_batch"] = best[name][b] * 1e3
            row[f"b{b}_ms_per_image"] = best[name][b] * 1e3 / b
            row[f"b{b}_images_per_s"] = b / best[name][b]
        out[name] = row
    return out


def run_latency(
    cfg: dict[str, Any], clipmdc_module: Any | None, peers: dict[str, Any], threads: int
) -> dict[str, Any]:
    """CPU latency/throughput of the trained models side by side (+ GPU section when CUDA is present)."""
    models: dict[str, Callable[[torch.Tensor], Any]] = {}
    if clipmdc_module is not None:
        net = clipmdc_module.model.eval()
        models["clipmdc_offline_real"] = net
    else:  # --skip-peers without accuracy run: an untrained network times the same
        net = clipmdc_model(cfg).eval()
        net.set_vocabulary(["good", "blowhole", "break", "crack", "fray", "uneven"], ["magnetic_tile"])
        models["clipmdc_offline_real"] = net
    for name, peer in peers.items():
        models[name] = peer.eval()
    batches = list(cfg["latency_batches"])
    cpu: dict[str, dict[str, dict[str, float]]] = {}
    for layout in LAYOUTS:  # NCHW first: converting to channels_last changes the models in place
        if layout == "channels_last":
            for m in models.values():
                m.to(memory_format=torch.channels_last)
        cpu[layout] = measure_latency(
            models,
            cfg["latency_size"],
            batches,
            cfg["latency_rounds"],
            cfg["latency_iters"],
            channels_last=layout == "channels_last",
        )
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for layout, rows in cpu.items():
        ours = rows["clipmdc_offline_real"]
        ratios[layout] = {}
        for name in peers:
            ratios[layout][name] = {
                f"b{b}_latency_ratio": ours[f"b{b}_ms_per_batch"] / rows[name][f"b{b}_ms_per_batch"]
                for b in batches
            } | {
                f"b{b}_throughput_ratio": ours[f"b{b}_images_per_s"] / rows[name][f"b{b}_images_per_s"]
                for b in batches
            }
    b1 = batches[0]
    per_layout = {
        layout: {
            "clipmdc_ms": rows["clipmdc_offline_real"][f"b{b1}_ms_per_batch"],
            "supersimplenet_ms": rows["supersimplenet"][f"b{b1}_ms_per_batch"]
            if "supersimplenet" in rows
            else None,
        }
        for layout, rows in cpu.items()
    }
    have_ssn = "supersimplenet" in peers
    goal = {
        "description": f"CLIP-MDC offline_real latency (batch {b1}, CPU) <= SuperSimpleNet's, in both memory layouts",
        "per_layout": per_layout,
        "met": None
        if not have_ssn
        else all(v["clipmdc_ms"] <= v["supersimplenet_ms"] for v in per_layout.values()),
    }
    return {
        "settings": {
            "image_size": cfg["latency_size"],
            "batches": batches,
            "threads": threads,
            "rounds": cfg["latency_rounds"],
            "iterations_per_round": {str(k): v for k, v in cfg["latency_iters"].items()},
            "dtype": "float32",
            "layouts": "nchw: models and inputs as built (contiguous); channels_last: every model converted with "
            ".to(memory_format=torch.channels_last) and channels_last inputs (helps oneDNN convolutions)",
            "timing": "best of `rounds` interleaved rounds (all models per round) after warm-up calls; "
            "torch.inference_mode; input already a (B, 3, S, S) tensor in [0, 1]; each model's full "
            "forward incl. its own normalisation and map upsampling to S x S",
            "models": {
                "clipmdc_offline_real": "the supervised-regime network (6-class vocabulary; text embeddings "
                "precomputed once, as in deployment)",
                "supersimplenet": "anomalib SupersimplenetModel eval forward (score + upsampled, blurred map)",
                "patchcore": "anomalib PatchcoreModel eval forward (nearest-neighbour search in the memory "
                "bank built at the training image size, then upsampled, blurred map)",
            },
        },
        "cpu": cpu,
        "ratios": ratios,
        "goal": goal,
        "gpu": run_gpu_latency(cfg),
    }


def run_gpu_latency(
    cfg: dict[str, Any], device: torch.device | None = None, compile: bool = True
) -> dict[str, Any]:
    """bf16 + channels_last + ``torch.compile`` timings of ``vit_b16`` (random weights) and ``offline_real``.

    Weights are cast to bf16 first; if that forward fails (e.g. an op without a bf16 kernel), the model is
    timed with fp32 weights under ``torch.autocast(dtype=torch.bfloat16)`` instead, and the JSON says so.
    ``device``/``compile`` exist for testing this path on the CPU; the benchmark calls it only with CUDA.
    """
    if device is None:
        if not torch.cuda.is_available():
            return {"skipped": "no CUDA device in this process; GPU section not run", "goal_ms": GPU_GOAL_MS}
        device = torch.device("cuda")
    from clipmdc.presets import offline_real, vit_b16
    from common.encoders.backbone import PACKAGE_WEIGHTS

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out: dict[str, Any] = {
        "device": name,
        "channels_last": True,
        "compile": compile,
        "image_size": cfg["latency_size"],
    }
    built = {
        "vit_b16": lambda: vit_b16(pretrained=None, backbone_weights=PACKAGE_WEIGHTS),
        "offline_real": offline_real,
    }
    rounds = max(5, cfg["latency_rounds"]) if device.type == "cuda" else 1
    iters = {1: 50, 32: 10} if device.type == "cuda" else {1: 1, 32: 1}
    results: dict[str, Any] = {}
    for key, build in built.items():
        net = build()
        net.set_vocabulary(["good", "blowhole", "break", "crack", "fray", "uneven"], ["magnetic_tile"])
        net = net.to(device).eval()
        net.embed_vocabulary()  # text embeddings once, outside the timed/compiled forward
        net = net.to(memory_format=torch.channels_last)
        errors = []
        res: dict[str, Any] = {}
        for mode in ("bf16_weights", "autocast_bf16"):
            try:
                if mode == "bf16_weights":
                    net_m = net.to(dtype=torch.bfloat16)
                    fn = torch.compile(net_m) if compile else net_m
                    dtype = torch.bfloat16
                else:
                    net_m = net.float()
                    inner = torch.compile(net_m) if compile else net_m

                    def fn(x: torch.Tensor, inner: Any = inner) -> Any:
                        with torch.autocast(device.type, dtype=torch.bfloat16):
                            return inner(x)

                    dtype = torch.float32
                res = measure_latency(
                    {key: fn},
                    cfg["latency_size"],
                    [1, 32],
                    rounds=rounds,
                    iters=iters,
                    device=device,
                    dtype=dtype,
                    channels_last=True,
                )[key]
                res["mode"] = mode
                break
            except Exception as e:  # a failing mode must not lose the other results
                errors.append(f"{mode}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                if compile:
                    torch._dynamo.reset()
        if errors:
            res["errors"] = errors
        results[key] = res
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["models"] = results
    ms = results.get("vit_b16", {}).get("b1_ms_per_image")
    h100 = "H100" in name
    out["goal"] = {
        "description": f"vit_b16 <= {GPU_GOAL_MS} ms per image at batch 1 on an H100",
        "ms": ms,
        "met": None if ms is None or not h100 else ms <= GPU_GOAL_MS,
        "note": None if h100 else f"device is {name}, not an H100: goal not judged",
    }
    return out
