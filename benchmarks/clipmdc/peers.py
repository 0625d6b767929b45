"""The peers of the benchmark (anomalib SuperSimpleNet and PatchCore, :mod:`benchmarks.peers`) on the same split."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.clipmdc.data import datamodule, evaluate
from benchmarks.clipmdc.settings import ANOMALY_KEYS, EXTRA_KEYS, log


# ---------------------------------------------------------------------------------------------------- peers
def run_supersimplenet(reader: Any, cfg: dict[str, Any], eval_split: str) -> tuple[dict[str, Any], Any]:
    """anomalib's SuperSimpleNet, supervised (real masks + labels), same data, epochs and batches as ours."""
    import lightning as L

    from benchmarks.peers import SuperSimpleNetPeer

    L.seed_everything(0, workers=True, verbose=False)
    dm = datamodule(reader, cfg, "supervised")
    peer = SuperSimpleNetPeer(supervised=True)
    loader = dm.train_dataloader()  # one loader: its shuffling generator advances across epochs
    t0 = time.perf_counter()
    info = peer.fit(lambda: loader, cfg["epochs"], log=log)
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
    dm = datamodule(reader, cfg, "normal_only", augment="none")
    peer = PatchCorePeer(coreset_ratio=cfg["coreset_ratio"])
    t0 = time.perf_counter()
    original = k_center_greedy.tqdm
    k_center_greedy.tqdm = _no_tqdm  # no per-iteration progress bar in the benchmark output
    try:
        info = peer.fit(dm.train_dataloader(), seed=0, log=log)
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
