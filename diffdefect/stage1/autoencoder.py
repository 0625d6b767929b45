"""Training the small latent autoencoder that stands in for Stable Diffusion's VAE where no weights can be had.

The paper's stage 1 uses SD's pretrained, frozen ``AutoencoderKL``. Offline (and on a CPU) there is none, so the
demo and the CPU benchmarks first train a small ``AutoencoderKL`` on the training images, export it with
``save_pretrained`` (its ``scaling_factor`` set to 1 / std of the training latents, as SD chose 0.18215) and then
load it frozen through :class:`~common.encoders.vae.FrozenVAE` ``(pretrained=...)`` like any other VAE.

Three parts, as everywhere: the network (diffusers' ``AutoencoderKL``, built by :func:`build_autoencoder` from a
:class:`~common.encoders.vae.FrozenVAE` preset plus overrides), the loss (:class:`VAELoss`: L1 reconstruction plus
a small KL term; SD's VAE adds LPIPS and a patch GAN, which need pretrained weights or far more compute than a
CPU demo has) and the thin :class:`VAEModule`. Config: ``configs/diffdefect/vae_demo.yaml``::

    lightning fit --config configs/diffdefect/vae_demo.yaml --data.init_args.source data/demo_stage1/pairs.jsonl
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from common.data.image_text import ImageTextBatch
from common.hparams import save_config_hyperparameters


def build_autoencoder(preset: str = "tiny", overrides: dict[str, Any] | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised ``AutoencoderKL`` of a :data:`common.encoders.vae.PRESETS` preset with overrides.

    ``block_out_channels`` sets the depth (``2 ** (levels - 1)`` downsampling); the block-type lists follow it
    unless given.
    """
    from diffusers import AutoencoderKL

    from common.encoders.vae import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"unknown VAE preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset])
    for key, value in (overrides or {}).items():
        cfg[key] = tuple(value) if isinstance(value, list) else value
    levels = len(cfg["block_out_channels"])
    if overrides and "block_out_channels" in overrides:
        if "down_block_types" not in overrides:
            cfg["down_block_types"] = ("DownEncoderBlock2D",) * levels
        if "up_block_types" not in overrides:
            cfg["up_block_types"] = ("UpDecoderBlock2D",) * levels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**cfg)


class VAELoss(nn.Module):
    """``l1 + kl_weight * kl``: mean absolute reconstruction error in [-1, 1] units plus the KL of the posterior to
    N(0, I) per image element (so ``kl_weight`` does not depend on the image size).

    Args:
        kl_weight: Weight of the KL term (1e-4 keeps latents near unit scale without blurring).
    """

    def __init__(self, kl_weight: float = 1e-4) -> None:
        super().__init__()
        self.kl_weight = kl_weight

    def forward(self, x: torch.Tensor, recon: torch.Tensor, posterior: Any) -> dict[str, torch.Tensor]:
        """``x``, ``recon``: ``(B, 3, H, W)`` in [-1, 1]; ``posterior``: diffusers' ``DiagonalGaussianDistribution``."""
        l1 = (recon - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()
        return {"l1": l1, "kl": kl, "total": l1 + self.kl_weight * kl}


class VAEModule(L.LightningModule):
    """Trains a small ``AutoencoderKL`` on the images of an :class:`~common.data.image_text.ImageTextDataModule`
    (pixels mode) and exports it for :class:`~common.encoders.vae.FrozenVAE`.

    Args:
        preset: :data:`common.encoders.vae.PRESETS` name the architecture starts from.
        overrides: ``AutoencoderKL`` arguments replacing the preset's (e.g. ``block_out_channels: [32, 64, 64]``
            for 4x downsampling).
        loss: The :class:`VAELoss` (default ``kl_weight`` 1e-4).
        optimizer: Optimizer factory (default AdamW, lr 2e-3).
        flips: Random horizontal/vertical flips of the training images (seeded per step).
        export_dir: Where :meth:`on_fit_end` writes the ``save_pretrained`` folder (``None``: not exported).
        scale_batches: Training batches over which the latent ``scaling_factor`` (1 / std) is measured at export.
        seed: Seed of the initial weights and of the per-step flips.
    """

    def __init__(
        self,
        preset: str = "tiny",
        overrides: dict[str, Any] | None = None,
        loss: VAELoss | None = None,
        optimizer: OptimizerCallable | None = None,
        flips: bool = True,
        export_dir: str | None = None,
        scale_batches: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        save_config_hyperparameters(self, objects=("loss", "optimizer"))
        self.vae = build_autoencoder(preset, overrides, seed)
        self.loss = loss or VAELoss()
        self.optimizer = optimizer
        self.flips = flips
        self.export_dir = export_dir
        self.scale_batches = scale_batches
        self.seed = seed

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            return torch.optim.AdamW(self.vae.parameters(), lr=2e-3)
        return self.optimizer(self.vae.parameters())

    def forward(self, image: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Any]:
        """``(B, 3, H, W)`` in [0, 1] -> reconstruction ``(B, 3, H, W)`` in [-1, 1] and the posterior."""
        posterior = self.vae.encode(image * 2.0 - 1.0).latent_dist  # (B, C, H/f, W/f) Gaussian
        recon = self.vae.decode(posterior.sample(generator=generator)).sample  # (B, 3, H, W)
        return recon, posterior

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flip = torch.rand(2, generator=g)
        if self.flips and flip[0] < 0.5:
            x = x.flip(-1)
        if self.flips and flip[1] < 0.5:
            x = x.flip(-2)
        return x

    def training_step(self, batch: ImageTextBatch, batch_idx: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.global_step)
        image = self._augment(batch.image, g)  # (B, 3, H, W) in [0, 1]
        recon, posterior = self(image, g if image.device.type == "cpu" else None)
        terms = self.loss(image * 2.0 - 1.0, recon, posterior)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(image))
        self.log("train/loss", terms["total"].detach(), prog_bar=True, batch_size=len(image))
        return terms["total"]

    def validation_step(self, batch: ImageTextBatch, batch_idx: int) -> None:
        posterior = self.vae.encode(batch.image * 2.0 - 1.0).latent_dist
        recon = self.vae.decode(posterior.mode()).sample
        self.log("val/l1", (recon - (batch.image * 2.0 - 1.0)).abs().mean(), batch_size=len(batch.image),
                 prog_bar=True)

    @torch.no_grad()
    def latent_scale(self, images: list[torch.Tensor]) -> float:
        """``1 / std`` of the posterior means of ``images`` (each ``(B, 3, H, W)`` in [0, 1])."""
        means = [self.vae.encode(x.to(self.device) * 2.0 - 1.0).latent_dist.mean for x in images]
        return float(1.0 / torch.cat([m.flatten() for m in means]).std().clamp(min=1e-6))

    def export(self, path: str | Path, images: list[torch.Tensor]) -> Path:
        """Writes the ``save_pretrained`` folder with ``scaling_factor`` measured on ``images``; returns ``path``."""
        was_training = self.vae.training
        self.vae.eval()
        scale = self.latent_scale(images)
        self.vae.register_to_config(scaling_factor=scale)
        self.vae.save_pretrained(str(path))
        self.vae.train(was_training)
        return Path(path)

    def on_fit_end(self) -> None:
        if self.export_dir is None or self.trainer.global_rank != 0:
            return
        loader = self.trainer.datamodule.train_dataloader() if self.trainer.datamodule else None
        if loader is None:
            raise RuntimeError("VAEModule export needs the DataModule's training images (fit with a datamodule)")
        images = []
        for i, batch in enumerate(loader):
            if i >= self.scale_batches:
                break
            images.append(batch.image)
        path = self.export(self.export_dir, images)
        print(f"exported the trained VAE (scaling_factor {self.vae.config.scaling_factor:.4f}) to {path}")
