"""Stage 2 is reproducible to the bit on CPU (issue 13 point 6): same seed -> identical weights whatever the number
of dataloader workers (augmentation on), and a run killed mid-epoch and resumed from ``last.ckpt`` ends with the
weights of an uninterrupted run."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from common.data import ClassIdSegReader, DefectDataModule
from common.encoders import TinyText
from diffdefect import EfficientNetFeatures, Stage2Model, Stage2Module
from tests.clipmdc.test_reproducible import Kill, _Killed, _same_weights
from tests.conftest import write_image


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("s2repro")
    (root / "labels.txt").write_text("__ignore__\n_background_\nSpot\n")
    for split, n in (("train", 10), ("test", 3)):
        for i in range(n):
            img = rng.integers(90, 150, (64, 64, 3), dtype=np.uint8)
            mask = np.zeros((64, 64), np.uint8)
            y, x = rng.integers(5, 45, 2)
            mask[y : y + 12, x : x + 8] = 1
            img[mask > 0] = 250
            write_image(root / "img_dir" / split / f"{i:06d}.png", img)
            write_image(root / "ann_dir" / split / f"{i:06d}.png", mask)
    return root


def _fit(root: Path, out: Path, workers: int = 0, callbacks: tuple = (), ckpt_path: str | None = None) -> Stage2Module:
    """8 training images (2 carved for val) / batch 3 = 3 steps per epoch, 7 steps, strong augmentation."""
    L.seed_everything(0, verbose=False)
    dm = DefectDataModule(ClassIdSegReader(root), image_size=64, batch_size=3, num_workers=workers, augment="strong",
                          seed=0)
    model = Stage2Model(EfficientNetFeatures(text_encoder=TinyText(32)), head="tiny")
    module = Stage2Module(model, optimizer=partial(torch.optim.AdamW, lr=1e-3), data_vocabulary=dm.vocabulary,
                          detection_metrics=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=7, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out, num_sanity_val_steps=0,
                        enable_checkpointing=bool(callbacks), callbacks=list(callbacks), deterministic=True)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except _Killed:
        pass
    return module


def test_stage2_same_seed_same_weights_whatever_the_workers(root, tmp_path) -> None:
    _same_weights(_fit(root, tmp_path / "a"), _fit(root, tmp_path / "b", workers=2))


def test_stage2_killed_and_resumed_run_equals_an_uninterrupted_one(root, tmp_path) -> None:
    full = _fit(root, tmp_path / "full")
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_last=True, save_top_k=0)
    _fit(root, tmp_path / "killed", callbacks=(every, Kill(5)))
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4  # mid epoch 1
    resumed = _fit(root, tmp_path / "resumed", callbacks=(ModelCheckpoint(dirpath=tmp_path / "c2", save_top_k=0),),
                   ckpt_path=str(last))
    _same_weights(full, resumed)
