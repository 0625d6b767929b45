"""CPU latency/throughput of the trained models side by side, and the GPU section."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks.clipmdc.arms import build_arm
from benchmarks.clipmdc.data import peer_datamodule
from benchmarks.clipmdc.peers import _no_tqdm
from benchmarks.clipmdc.settings import GPU_GOAL_MS, Settings, log


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


MODELS = {
    "clipmdc_offline_real": "the normal_only arm's network (configs/benchmarks/clipmdc_normal_only.yaml: the "
    "offline_real preset's defaults, its memory with the arm's coreset ratio built from the data's normal "
    "training images at the latency size; the data's vocabulary; text embeddings computed once, as deployed)",
    "supersimplenet": "anomalib SupersimplenetModel eval forward (score + upsampled, blurred map); untrained "
    "(its speed does not depend on its weights)",
    "patchcore": "anomalib PatchcoreModel eval forward (nearest-neighbour search in the memory bank built from "
    "the same normal images, then upsampled, blurred map)",
}


def _normal_images(arm: Any, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` normal training images of the arm's data (un-augmented): ``[(images, sample ids)]``."""
    dm = peer_datamodule(arm.datamodule, arm.resolved["data"]["init_args"], "normal", "none")
    out, seen = [], 0
    for batch in dm.train_dataloader():
        if seen >= n:
            break
        out.append((batch.image[: n - seen], batch.sample_id[: n - seen]))
        seen += len(out[-1][1])
    return out


def build_models(settings: Settings, data_config: Path | None, data_root: Path | None, workdir: Path
                 ) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """CLIP-MDC (the normal_only arm, memory filled), SuperSimpleNet and PatchCore at the latency size."""
    from benchmarks.peers import PatchCorePeer, SuperSimpleNetPeer

    arm = build_arm("normal_only", data_config, replace(settings, image_size=settings.latency_size), workdir)
    images = _normal_images(arm, settings.latency_memory_images)
    module, dm = arm.module, arm.datamodule
    module._configure_vocabulary(dm.vocabulary, dm.object_names)
    net = module.model.eval()
    with torch.inference_mode():
        tokens = [(net.image_encoder(x).tokens, ids) for x, ids in images]
        info = net.memory.build(tokens) if net.memory is not None else None
    net.embed_vocabulary()
    from anomalib.models.components.sampling import k_center_greedy

    patchcore = PatchCorePeer(coreset_ratio=settings.coreset_ratio)
    original, k_center_greedy.tqdm = k_center_greedy.tqdm, _no_tqdm  # no per-iteration progress bar
    try:
        patchcore.fit([SimpleNamespace(image=x, label=torch.zeros(len(x), dtype=torch.long)) for x, _ in images],
                      log=lambda *_: None)
    finally:
        k_center_greedy.tqdm = original
    models = {"clipmdc_offline_real": net, "supersimplenet": SuperSimpleNetPeer(supervised=True).eval(),
              "patchcore": patchcore.eval()}
    log(f"latency models: CLIP-MDC memory {info}, PatchCore bank {tuple(patchcore.model.memory_bank.shape)}")
    return models, [x for x, _ in images]


def _ort_session(path: Path, threads: int) -> Callable[[torch.Tensor], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})


def onnx_models(models: dict[str, Any], size: int, calibration: list[torch.Tensor], workdir: Path, threads: int,
                batches: Sequence[int] = (1,)) -> tuple[dict[str, dict[str, Callable]], dict[str, str]]:
    """ONNX Runtime sessions: every model in float32, CLIP-MDC also in INT8 (static, calibrated on the normal
    images; :mod:`clipmdc.quantize`). Returns ``({runtime: {model: fn}}, {model: error})``."""
    from clipmdc.export import export_onnx
    from clipmdc.quantize import quantize_onnx

    workdir.mkdir(parents=True, exist_ok=True)
    fp32: dict[str, Callable] = {}
    errors: dict[str, str] = {}
    for name, model in models.items():
        path = workdir / f"{name}.onnx"
        try:
            if name.startswith("clipmdc"):
                export_onnx(model, path, image_size=size)
            else:
                with torch.no_grad():
                    torch.onnx.export(model, (torch.rand(2, 3, size, size),), str(path), input_names=["image"],
                                      dynamic_axes={"image": {0: "batch"}}, opset_version=18, dynamo=False)
            fn = _ort_session(path, threads)
            for b in batches:  # a file that exports but fails at another batch size is an error, not a timing
                fn(torch.rand(b, 3, size, size))
            fp32[name] = fn
        except Exception as e:  # a peer that does not export must not lose the others' timings
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    runtimes = {"onnxruntime_fp32": fp32}
    if "clipmdc_offline_real" in fp32:
        int8 = quantize_onnx(workdir / "clipmdc_offline_real.onnx", workdir / "clipmdc_int8.onnx", "static",
                             [x.numpy() for x in calibration])
        runtimes["onnxruntime_int8"] = {"clipmdc_offline_real": _ort_session(int8, threads)}
    return runtimes, errors


def _ratios(rows: dict[str, dict[str, float]], peers: Sequence[str], batches: Sequence[int],
            ours: str = "clipmdc_offline_real") -> dict[str, dict[str, float]]:
    out = {}
    for name in peers:
        if name in rows and ours in rows:
            out[name] = {f"b{b}_latency_ratio": rows[ours][f"b{b}_ms_per_batch"] / rows[name][f"b{b}_ms_per_batch"]
                         for b in batches} | {
                f"b{b}_throughput_ratio": rows[ours][f"b{b}_images_per_s"] / rows[name][f"b{b}_images_per_s"]
                for b in batches}
    return out


def run_latency(settings: Settings, data_config: Path | None, data_root: Path | None, workdir: Path, threads: int
                ) -> dict[str, Any]:
    """CPU latency/throughput side by side in one run: torch (NCHW and channels_last), ONNX Runtime float32 and
    CLIP-MDC's INT8 file (+ a GPU section when CUDA is present)."""
    models, images = build_models(settings, data_config, data_root, workdir / "latency")
    size, batches = settings.latency_size, list(settings.latency_batches)
    timing = dict(size=size, batches=batches, rounds=settings.latency_rounds, iters=settings.latency_iters)
    runtimes, errors = onnx_models(models, size, images, workdir / "latency_onnx", threads, batches)
    # NCHW torch and every ONNX Runtime session in one interleaved measurement (the same machine load for all)
    together = {f"torch/{k}": m for k, m in models.items()}
    together |= {f"{rt}/{k}": fn for rt, fns in runtimes.items() for k, fn in fns.items()}
    rows = measure_latency(together, **timing)
    cpu = {"nchw": {k.split("/", 1)[1]: v for k, v in rows.items() if k.startswith("torch/")}}
    ort_rows = {rt: {k.split("/", 1)[1]: v for k, v in rows.items() if k.startswith(rt + "/")} for rt in runtimes}
    for m in models.values():  # then channels_last (converts the models in place)
        m.to(memory_format=torch.channels_last)
    cpu["channels_last"] = measure_latency(models, channels_last=True, **timing)
    ratios = {layout: _ratios(rows, ("supersimplenet", "patchcore"), batches) for layout, rows in cpu.items()}
    # INT8 CLIP-MDC against the peers' float32 ONNX Runtime rows (the peers are not quantised)
    ratios |= {rt: _ratios(ort_rows["onnxruntime_fp32"] | rows, ("supersimplenet", "patchcore"), batches)
               for rt, rows in ort_rows.items()}
    b1, bn = batches[0], batches[-1]
    judged = {k: v.get("supersimplenet") for k, v in ratios.items() if k != "onnxruntime_int8"}
    checks = {k: None if r is None else (r[f"b{b1}_latency_ratio"] <= 0.7 and r[f"b{bn}_throughput_ratio"] >= 1.0)
              for k, r in judged.items()}
    goal = {
        "description": f"CLIP-MDC offline_real (preset defaults, memory) at {size}x{size}, {threads} thread(s): "
        f"batch-{b1} latency <= 0.7x SuperSimpleNet's and batch-{bn} throughput >= SuperSimpleNet's, in torch "
        "(both layouts) and in ONNX Runtime float32 (INT8 reported beside, against SuperSimpleNet's float32)",
        "per_runtime": {k: {**(judged[k] or {}), "met": v} for k, v in checks.items()},
        "met": None if any(v is None for v in checks.values()) else all(checks.values()),
    }
    return {
        "settings": {
            **settings.record(),
            "threads": threads,
            "dtype": "float32 (torch, onnxruntime_fp32); int8 weights+activations (onnxruntime_int8: "
            "clipmdc.quantize static QDQ, MinMax-calibrated on the memory's normal images)",
            "layouts": "nchw: models and inputs as built (contiguous); channels_last: every model converted with "
            ".to(memory_format=torch.channels_last) and channels_last inputs",
            "onnxruntime": "CPUExecutionProvider, intra_op_num_threads = threads, sequential; float32 files "
            "exported at the latency size with a dynamic batch axis (CLIP-MDC: clipmdc.export.export_onnx)",
            "timing": "best of `rounds` interleaved rounds (all models per round) after warm-up calls; "
            "torch.inference_mode; input already a (B, 3, S, S) tensor in [0, 1]; each model's full "
            "forward incl. its own normalisation and map upsampling/smoothing to S x S",
            "models": MODELS,
        },
        "cpu": cpu,
        "onnxruntime": ort_rows,
        "onnx_export_errors": errors,
        "ratios": ratios,
        "goal": goal,
        "gpu": run_gpu_latency(settings),
    }


def run_gpu_latency(
    settings: Settings, device: torch.device | None = None, compile: bool = True
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
        "image_size": settings.latency_size,
    }
    built = {
        "vit_b16": lambda: vit_b16(pretrained=None, backbone_weights=PACKAGE_WEIGHTS),
        "offline_real": offline_real,
    }
    rounds = max(5, settings.latency_rounds) if device.type == "cuda" else 1
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
                    settings.latency_size,
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
