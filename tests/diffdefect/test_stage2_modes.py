"""Stage 2 accepts every resize mode (issue 13): training on tiles / letterboxed images, test metrics on the image's
own pixels (stitched in tile mode), predictions in the file's pixels."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from common.data import ClassIdSegReader, DefectDataModule
from common.data.tiling import RESIZE_MODES
from common.encoders import TinyText
from diffdefect import EfficientNetFeatures, Stage2Model, Stage2Module
from tests.conftest import write_image


@pytest.fixture(scope="module")
def long_root(tmp_path_factory) -> Path:
    """NEU-Seg layout, 48 x 120 images: a bright bar ("spot") on grey noise."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("long")
    (root / "labels.txt").write_text("__ignore__\n_background_\nSpot\n")
    for split, n in (("train", 6), ("test", 3)):
        for i in range(n):
            img = rng.integers(90, 150, (48, 120, 3), dtype=np.uint8)
            mask = np.zeros((48, 120), np.uint8)
            x = int(rng.integers(10, 100))
            mask[10:38, x : x + 6] = 1
            img[mask > 0] = 250
            write_image(root / "img_dir" / split / f"{i:06d}.png", img)
            write_image(root / "ann_dir" / split / f"{i:06d}.png", mask)
    return root


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_stage2_every_mode_fits_tests_and_predicts_in_file_pixels(long_root, tmp_path, mode) -> None:
    L.seed_everything(0, verbose=False)
    data = DefectDataModule(ClassIdSegReader(long_root), image_size=64, batch_size=5, eval_batch_size=4,
                            num_workers=0, augment="none", resize=mode, predict_reader=ClassIdSegReader(long_root))
    model = Stage2Model(EfficientNetFeatures(text_encoder=TinyText(32)), head="tiny")
    module = Stage2Module(model, optimizer=partial(torch.optim.AdamW, lr=2e-3), data_vocabulary=data.vocabulary,
                          detection_metrics=mode != "tile")
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    (results,) = trainer.test(module, datamodule=data, verbose=False)
    assert all(math.isfinite(results[f"test/{k}"]) for k in ("miou", "pixel_auroc", "mask"))
    preds = [p for batch in trainer.predict(module, datamodule=data) for p in batch]
    assert len(preds) == 9
    assert all(p.anomaly_map.shape == (48, 120) and p.label_map.shape == (48, 120) for p in preds)
