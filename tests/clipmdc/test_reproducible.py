"""CLIP-MDC runs are reproducible to the bit on CPU (issue 13 point 6): the same seed gives identical weights and
metrics with augmentation and Perlin synthesis on, whatever the number of dataloader workers; a run killed
mid-epoch and resumed from ``last.ckpt`` ends with the weights of an uninterrupted run (normal memory included)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from clipmdc.memory import NormalMemory
from clipmdc.module import CLIPMDCModule
from clipmdc.presets import tiny
from common.data import DefectDataModule, MVTecReader
from common.synthesis.generator import PerlinAnomalyGenerator
from tests.conftest import blob_pair, write_image


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repro") / "data"
    rng = np.random.default_rng(0)
    for i in range(10):
        write_image(root / "plate" / "train" / "good" / f"{i:03d}.png", blob_pair(rng, 48, False)[0])
    for d in ("good", "scratch"):
        for i in range(3):
            img, m = blob_pair(rng, 48, d != "good")
            write_image(root / "plate" / "test" / d / f"{i:03d}.png", img)
            if d != "good":
                write_image(root / "plate" / "ground_truth" / d / f"{i:03d}_mask.png", m * 255)
    return root


def _fit(root: Path, out: Path, workers: int = 0, max_steps: int = 6, callbacks: tuple = (),
         ckpt_path: str | None = None) -> tuple[CLIPMDCModule, dict]:
    """Normal-only regime: Perlin synthesis on, strong augmentation, normal memory; 10 training images / batch 3
    = 4 steps per epoch."""
    L.seed_everything(0, verbose=False)
    dm = DefectDataModule(MVTecReader(root), image_size=48, batch_size=3, num_workers=workers, augment="strong",
                          seed=0, val_from="test")
    module = CLIPMDCModule(tiny(memory=NormalMemory(coreset_ratio=0.5)), regime="normal_only",
                           synthesis=PerlinAnomalyGenerator(), optimizer=partial(torch.optim.AdamW, lr=1e-3), seed=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out, num_sanity_val_steps=0,
                        enable_checkpointing=bool(callbacks), callbacks=list(callbacks), deterministic=True)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except _Killed:
        pass
    return module, {k: float(v) for k, v in trainer.callback_metrics.items()}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_same_seed_same_weights_and_metrics_whatever_the_workers(root, tmp_path) -> None:
    a, ma = _fit(root, tmp_path / "a", workers=0)
    c, mc = _fit(root, tmp_path / "c", workers=2)  # two runs, and the loading split over two worker processes
    _same_weights(a, c)
    assert ma.keys() == mc.keys() and all(ma[k] == mc[k] or (ma[k] != ma[k] and mc[k] != mc[k]) for k in ma)
    assert any(k.startswith("val/") for k in ma)  # validation metrics compared too
    assert a.model.memory.ready and torch.equal(a.model.memory.bank, c.model.memory.bank)


class _Killed(Exception):
    pass


class Kill(Callback):
    """Dies (no hook, no checkpoint) after training step ``step``, as a SIGKILL would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise _Killed


@pytest.mark.parametrize("save_at", [6, pytest.param(2, marks=pytest.mark.slow)])  # mid epoch 1, mid epoch 0
def test_killed_and_resumed_run_equals_an_uninterrupted_one(root, tmp_path, save_at) -> None:
    """10 training images / batch 3 = 4 steps per epoch, 10 steps: validation (threshold calibration) after steps
    4 and 8. (A checkpoint written on an epoch's last batch, before its validation, resumes without that
    validation in Lightning 2.x: the thresholds it calibrates would differ, the trained weights not.)"""
    full, _ = _fit(root, tmp_path / "full", max_steps=10)
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=save_at, save_last=True, save_top_k=0)
    _fit(root, tmp_path / "killed", max_steps=10, callbacks=(every, Kill(save_at + 1)))
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == save_at
    resumed, _ = _fit(root, tmp_path / "resumed", max_steps=10,
                      callbacks=(ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_top_k=0),), ckpt_path=str(last))
    _same_weights(full, resumed)
