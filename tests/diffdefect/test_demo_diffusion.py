"""The demo VAE (VAEModule: loss terms, export loaded by FrozenVAE) and the `make demo-diffusion` runner."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from common.data.image_text import ImageTextDataModule
from common.encoders.vae import FrozenVAE
from diffdefect.stage1.autoencoder import VAELoss, VAEModule, build_autoencoder
from diffdefect.stage1.demo import class_rows, labelled_grid


def test_build_autoencoder_depth_follows_the_channels() -> None:
    ae = build_autoencoder("tiny", {"block_out_channels": [8, 16, 16], "norm_num_groups": 4})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert ae.encode(x).latent_dist.mean.shape == (2, 4, 8, 8)
    torch.testing.assert_close(build_autoencoder("tiny", seed=1).encoder.conv_in.weight,
                               build_autoencoder("tiny", seed=1).encoder.conv_in.weight)
    with pytest.raises(ValueError, match="unknown VAE preset"):
        build_autoencoder("huge")


def test_vae_loss_terms_and_gradients() -> None:
    module = VAEModule(loss=VAELoss(kl_weight=0.5))
    image = torch.rand(2, 3, 16, 16)
    recon, posterior = module(image)
    terms = module.loss(image * 2 - 1, recon, posterior)
    assert set(terms) == {"l1", "kl", "total"}
    torch.testing.assert_close(terms["total"], terms["l1"] + 0.5 * terms["kl"])
    terms["total"].backward()
    assert all(p.grad is not None for p in module.vae.parameters() if p.requires_grad)


def test_vae_fit_exports_a_frozen_vae_with_its_latent_scale(demo_manifest: Path, tmp_path: Path) -> None:
    module = VAEModule(export_dir=str(tmp_path / "vae"), scale_batches=2)
    data = ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=4, num_workers=0)
    before = module.vae.encoder.conv_in.weight.detach().clone()
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    assert not torch.equal(before, module.vae.encoder.conv_in.weight)
    assert {"train/l1", "train/kl", "train/loss"} <= set(trainer.callback_metrics)
    frozen = FrozenVAE(pretrained=tmp_path / "vae")
    assert frozen.scaling_factor == pytest.approx(module.vae.config.scaling_factor) and frozen.scaling_factor != 1.0
    assert not any(p.requires_grad for p in frozen.parameters())
    data.setup("fit")
    images = next(iter(data.train_dataloader())).image
    latents = frozen.encode(images, sample=False)
    with torch.no_grad():
        expected = module.vae.encode(images * 2 - 1).latent_dist.mean * frozen.scaling_factor
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)


def test_labelled_grid_has_one_row_per_class(tmp_path: Path) -> None:
    rows = class_rows()
    assert len(rows) == 8 and ("plate", None) in rows and ("fabric", "stain") in rows
    tile = torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()
    path = labelled_grid([[tile] * 3 for _ in rows], [f"{o} {d}" for o, d in rows], tmp_path / "g.png", scale=2)
    w, h = Image.open(path).size
    assert h == 8 * (16 + 2) and w == 96 + 3 * (16 + 2)


@pytest.mark.slow
def test_demo_diffusion_quick_run_writes_grid_checkpoint_and_times(tmp_path: Path, monkeypatch) -> None:
    from diffdefect.stage1.demo import run_diffusion_demo
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the configs are read from the repository
    out = tmp_path / "out"
    times = run_diffusion_demo(str(tmp_path / "corpus"), str(out), quick=True)
    assert set(times) == {"data", "vae", "precompute", "stage1", "sampling", "total"}
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "vae" / "config.json").is_file()
    w, h = Image.open(out / "grid.png").size
    assert h == 8 * (128 + 2) and w == 96 + 2 * (128 + 2)  # 8 rows: a real image + one sample each, 64 px x 2
    prompts = [json.loads(ln) for ln in (out / "samples" / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 8 and "hole" in prompts[2]["prompt"]
    assert json.loads((out / "times.json").read_text())["stage1_steps"] == 2
    w, h = Image.open(out / "inpaint.png").size
    assert h == 2 * (128 + 2) and w == 96 + 5 * (128 + 2)  # per object: normal, mask, 3 defect types
