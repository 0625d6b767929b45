"""The tiny model learns: a few hundred CPU steps on the demo data lower the held-out denoising loss."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch

from common.data import MVTecReader
from common.data.demo import generate_demo_dataset
from common.data.image_text import ImageTextDataModule
from diffdefect import Stage1Module
from diffdefect.stage1.captions import build_manifest
from tests.diffdefect.conftest import tiny_model


@pytest.mark.slow
def test_heldout_denoising_loss_drops_by_30_percent(tmp_path) -> None:
    root = generate_demo_dataset(tmp_path / "demo", seed=0, image_size=32)  # 144 images
    manifest = build_manifest(MVTecReader(root), tmp_path / "pairs.jsonl")
    data = ImageTextDataModule(str(manifest), image_size=16, batch_size=16, num_workers=0, val_fraction=0.25)
    module = Stage1Module(tiny_model(), optimizer=partial(torch.optim.AdamW, lr=1e-3), ema_decay=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=300, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        check_val_every_n_epoch=10_000)
    before = trainer.validate(module, data, verbose=False)[0]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]
    # held-out pairs, fixed timesteps 100..900, fixed noise: the same quantity before and after
    assert after["val/diff"] <= 0.7 * before["val/diff"], (before, after)
    assert after["val/imp"] < before["val/imp"]  # the implicit captioner aligns with the text space
