"""A frozen ``AutoencoderKL`` (Stable Diffusion's VAE) behind the frozen-encoder wrapper.

Pixels ``(B, 3, H, W)`` in [0, 1] go to latents ``(B, C, H/f, W/f)`` (``f = 8`` and ``C = 4`` for SD's VAE) and
back. Encoding is split in two so that latents can be precomputed once and sampled later exactly as on the fly:

* :meth:`FrozenVAE.encode_moments`: the diagonal Gaussian's parameters ``(B, 2C, h, w)`` (mean and log-variance,
  what diffusers' ``DiagonalGaussianDistribution`` takes), deterministic;
* :func:`sample_latents`: ``scaling_factor * (mean + std * eps)`` with an optional generator
  (``sample=False`` takes the mean); :meth:`FrozenVAE.sample_latents` applies it with the VAE's own factor.

Weights come from a local folder or a hub id (``from_pretrained(path_or_id, subfolder="vae")``; users with
internet), or from a random tiny preset (tests, CPU smoke runs: no weights at all).

Why in ``common/encoders``: it is a frozen encoder like the others (one wrapper, out of checkpoints), used by
stage 1, by stage 2 through the stage-1 model, and by the benchmarks' feature probes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from common.encoders.frozen import FrozenEncoder

# A 2-level, 8-channel AutoencoderKL: 2x downsampling, 4 latent channels, a few thousand parameters.
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
    "scaling_factor": 1.0,
}

# Stable Diffusion 1.5's VAE architecture (83.7M parameters); random weights unless loaded from a checkpoint.
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

PRESETS = {"tiny": TINY_VAE_CONFIG, "sd": SD_VAE_CONFIG}


def sample_latents(
    moments: torch.Tensor, scaling_factor: float, generator: torch.Generator | None = None, sample: bool = True
) -> torch.Tensor:
    """Scaled latents from the VAE posterior's parameters: ``scaling_factor * (mean + std * eps)``.

    The one implementation: fresh moments (:meth:`FrozenVAE.encode_moments`) and precomputed ones (latent
    shards, possibly without a VAE in the process) go through it alike.

    Args:
        moments: ``(B, 2C, h, w)`` mean and log-variance, unscaled.
        scaling_factor: The VAE's latent scale (0.18215 for SD 1.x).
        generator: Random generator for the draw (``None``: the global RNG).
        sample: Draw from the distribution; ``False`` takes its mean.

    Returns:
        ``(B, C, h, w)`` float32 latents times ``scaling_factor``.
    """
    mean, logvar = moments.float().chunk(2, dim=1)  # (B, C, h, w) each
    if not sample:
        return mean * scaling_factor
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # as diffusers' DiagonalGaussianDistribution
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * eps) * scaling_factor


class FrozenVAE(nn.Module):
    """Frozen ``diffusers.AutoencoderKL``.

    Args:
        pretrained: Local folder or hub id of an ``AutoencoderKL`` (e.g. ``"stabilityai/sd-vae-ft-mse"``, or an
            SD repo with ``subfolder="vae"``). ``None`` builds ``preset`` with random weights.
        subfolder: Sub-folder of ``pretrained`` holding the VAE (``"vae"`` for a full SD pipeline repo).
        preset: ``"tiny"`` (tests) or ``"sd"`` (SD architecture, random) when ``pretrained`` is ``None``.
        scaling_factor: Latent scale; ``None`` takes the model config's (0.18215 for SD 1.x, 1.0 for the tiny
            preset).
        seed: Seed of the random init (``pretrained=None``), so that a tiny VAE is the same in every process.
        local_files_only: Never download (default: follows ``HF_HUB_OFFLINE``).
    """

    def __init__(
        self,
        pretrained: str | os.PathLike | None = None,
        subfolder: str | None = None,
        preset: str = "tiny",
        scaling_factor: float | None = None,
        seed: int = 0,
        local_files_only: bool | None = None,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.pretrained = None if pretrained is None else os.fspath(pretrained)
        if pretrained is not None:
            if local_files_only is None:
                local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            vae = AutoencoderKL.from_pretrained(
                self.pretrained, subfolder=subfolder, local_files_only=local_files_only
            )
        else:
            if preset not in PRESETS:
                raise ValueError(f"unknown VAE preset {preset!r}; choose from {sorted(PRESETS)}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                vae = AutoencoderKL(**PRESETS[preset])
        self.vae = FrozenEncoder(vae)
        if scaling_factor is None:
            scaling_factor = float(getattr(vae.config, "scaling_factor", None) or 0.18215)
        self.scaling_factor = float(scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.vae.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.module.parameters()).dtype

    def encode_moments(self, image: torch.Tensor) -> torch.Tensor:
        """Encodes images into the latent Gaussian's parameters.

        Args:
            image: ``(B, 3, H, W)`` in [0, 1].

        Returns:
            ``(B, 2C, H/f, W/f)`` float32: mean (first ``C`` channels) and log-variance, unscaled.
        """
        x = image.to(self.dtype) * 2.0 - 1.0  # (B, 3, H, W) in [-1, 1]
        with torch.no_grad():
            moments = self.vae.module.encode(x).latent_dist.parameters  # (B, 2C, h, w)
        return moments.float()

    def sample_latents(
        self, moments: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Draws scaled latents from :meth:`encode_moments` output (:func:`sample_latents` with this VAE's
        ``scaling_factor``)."""
        return sample_latents(moments, self.scaling_factor, generator, sample)

    def encode(
        self, image: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Pixels ``(B, 3, H, W)`` in [0, 1] -> scaled latents ``(B, C, H/f, W/f)``."""
        return self.sample_latents(self.encode_moments(image), generator, sample)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, C, h, w)`` -> images ``(B, 3, h*f, w*f)`` float32 in [0, 1]."""
        with torch.no_grad():
            x = self.vae.module.decode(latents.to(self.dtype) / self.scaling_factor).sample  # (B, 3, H, W)
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Saves the wrapped ``AutoencoderKL`` (diffusers format) so ``FrozenVAE(pretrained=path)`` loads it."""
        self.vae.module.save_pretrained(os.fspath(path))

    def extra_repr(self) -> str:
        return f"pretrained={self.pretrained}, scaling_factor={self.scaling_factor}, downsample={self.downsample}"
