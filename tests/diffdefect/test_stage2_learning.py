"""Stage 2 learns: on two easily told apart defect kinds, a short fit of the tiny head on frozen
EfficientNet-Lite0 features segments and names held-out images (targets, matching and inference agree)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from common.data import ClassIdSegReader, DefectDataModule
from common.encoders import TinyText
from diffdefect import EfficientNetFeatures, FeatureCache, Stage2Model, Stage2Module
from tests.conftest import write_image


@pytest.fixture
def two_kinds_root(tmp_path: Path) -> Path:
    """NEU-Seg layout, 64 px: a bright square ("spot") or a dark disk ("hole") on grey noise, one per image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "two_kinds"
    root.mkdir()
    (root / "labels.txt").write_text("__ignore__\n_background_\nSpot\nHole\n")
    yy, xx = np.mgrid[:64, :64]
    for split, n in (("train", 24), ("test", 8)):
        for i in range(n):
            img = rng.integers(90, 150, (64, 64, 3), dtype=np.uint8)
            cy, cx = rng.integers(14, 50, 2)
            kind = 1 + i % 2
            mask = (abs(yy - cy) <= 7) & (abs(xx - cx) <= 7) if kind == 1 else (yy - cy) ** 2 + (xx - cx) ** 2 <= 64
            img[mask] = 250 if kind == 1 else 10
            write_image(root / "img_dir" / split / f"{i:06d}.jpg", img)
            write_image(root / "ann_dir" / split / f"{i:06d}.png", mask.astype(np.uint8) * kind)
    return root


def logged(results: list[dict[str, float]]) -> dict[str, float]:
    """The test metrics Lightning logged, without the stage prefix."""
    return {k.removeprefix("test/"): v for k, v in results[0].items()}


def test_tiny_head_segments_and_names_heldout_defects(two_kinds_root: Path) -> None:
    L.seed_everything(0, verbose=False)
    data = DefectDataModule(ClassIdSegReader(two_kinds_root), image_size=64, batch_size=8, num_workers=0,
                            split="auto", augment="none", seed=0)
    model = Stage2Model(EfficientNetFeatures(text_encoder=TinyText(32)), head="tiny", cache=FeatureCache())
    module = Stage2Module(model, optimizer=partial(torch.optim.AdamW, lr=2e-3), data_vocabulary=data.vocabulary)
    trainer = L.Trainer(accelerator="cpu", max_epochs=25, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    before = logged(trainer.test(module, datamodule=data, verbose=False))
    trainer.fit(module, datamodule=data)
    after = logged(trainer.test(module, datamodule=data, verbose=False))
    assert after["iou_spot"] > 0.5 and after["iou_hole"] > 0.5, after
    assert after["miou"] > before["miou"] + 0.2, (before, after)
    assert after["accuracy"] >= 0.75, after  # the image's class, read from its masks
