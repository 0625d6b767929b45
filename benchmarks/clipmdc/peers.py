"""The peers of the benchmark (anomalib SuperSimpleNet and PatchCore, :mod:`benchmarks.peers`) on the arm's data.

Each peer gets a DataModule over the same (subsampled) reader, split and sizes as the CLIP-MDC arm of its regime
(:func:`~benchmarks.clipmdc.data.peer_datamodule`) and the same budget rule: SuperSimpleNet trains for at most
``Settings.max_epochs`` epochs, stopped with the arm's ``EarlyStopping`` patience on the same validation score,
best epoch tested; PatchCore has no epochs (one pass over the normal training images builds its bank).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.clipmdc.data import evaluate, peer_datamodule, val_score
from benchmarks.clipmdc.settings import ANOMALY_KEYS, EXTRA_KEYS, log


def _eval_loader(dm: Any, eval_split: str) -> Any:
    return dm.test_dataloader() if eval_split == "test" else dm.val_dataloader()


def run_supersimplenet(
    arm_dm: Any, data_args: dict[str, Any], max_epochs: int, patience: int, eval_split: str, supervised: bool
) -> tuple[dict[str, Any], Any]:
    """anomalib's SuperSimpleNet: supervised (real masks + labels) or unsupervised (normal training images only,
    its own feature-space Perlin anomalies), early-stopped on the validation score."""
    import lightning as L

    from benchmarks.peers import SuperSimpleNetPeer

    L.seed_everything(0, workers=True, verbose=False)
    dm = peer_datamodule(arm_dm, data_args, "all" if supervised else "normal", "light")
    peer = SuperSimpleNetPeer(supervised=supervised)
    loader = dm.train_dataloader()  # one loader: its shuffling generator advances across epochs
    val_loader = dm.val_dataloader()

    def score(model: Any) -> float:
        return val_score(evaluate(lambda x: (*model(x), None), val_loader))

    t0 = time.perf_counter()
    info = peer.fit(lambda: loader, max_epochs, log=log, val_score=score, patience=patience)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate(lambda x: (*peer(x), None), _eval_loader(dm, eval_split))
    test_s = time.perf_counter() - t0
    trainable = sum(p.numel() for m in (peer.model.adaptor, peer.model.segdec) for p in m.parameters())
    return {
        **{k: metrics[k] for k in (*ANOMALY_KEYS, *EXTRA_KEYS)},
        "mode": "supervised" if supervised else "unsupervised",
        "epochs": info["epochs"],
        "best_epoch": info["best_epoch"],
        "stopped_early": info["epochs"] < max_epochs,
        "val_score_history": info["val_scores"],
        "final_train_loss": info["epoch_losses"][-1],
        "train_s": train_s,
        "test_s": test_s,
        "train_images": len(dm.split_records()["train"]),
        "parameters": {"trainable": trainable},
    }, peer


def run_patchcore(
    arm_dm: Any, data_args: dict[str, Any], coreset_ratio: float, eval_split: str
) -> tuple[dict[str, Any], Any]:
    """anomalib's PatchCore: memory bank of the normal training images (no augmentation), coreset-subsampled."""
    import lightning as L
    from anomalib.models.components.sampling import k_center_greedy

    from benchmarks.peers import PatchCorePeer

    L.seed_everything(0, workers=True, verbose=False)
    dm = peer_datamodule(arm_dm, data_args, "normal", "none")
    peer = PatchCorePeer(coreset_ratio=coreset_ratio)
    t0 = time.perf_counter()
    original = k_center_greedy.tqdm
    k_center_greedy.tqdm = _no_tqdm  # no per-iteration progress bar in the benchmark output
    try:
        info = peer.fit(dm.train_dataloader(), seed=0, log=log)
    finally:
        k_center_greedy.tqdm = original
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate(lambda x: (*peer(x), None), _eval_loader(dm, eval_split))
    test_s = time.perf_counter() - t0
    return {
        **{k: metrics[k] for k in (*ANOMALY_KEYS, *EXTRA_KEYS)},
        "epochs": 1,
        "best_epoch": 1,
        "stopped_early": False,
        "train_s": train_s,
        "test_s": test_s,
        "train_images": info["images"],
        "memory_bank": info["memory_bank"],
        "patches_before_coreset": info["patches"],
    }, peer


def _no_tqdm(iterable: Any, *args: Any, **kwargs: Any) -> Any:
    return iterable
