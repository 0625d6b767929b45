"""The stage-1 denoising U-Net: diffusers' ``UNet2DConditionModel`` with the SD-1.5 block configuration.

Presets (random init; the paper trains from scratch):

* ``sd15``: 4 levels with 320/640/1280/1280 channels, 2 ResNet blocks per level, a cross-attention transformer
  after each ResNet block of the first three levels and in the middle block, 8 attention heads, 768-d context,
  4 latent channels at 64x64 (512x512 pixels through an 8x VAE): 859,520,964 parameters.
* ``tiny``: 2 levels with 32/64 channels, one block each, 32-d context, 8x8 latents: for tests and CPU smoke runs.

:func:`unet_config` merges a preset with overrides; :func:`build_unet` builds it (on the meta device with
``device="meta"``, in milliseconds, for parameter counts and FLOP estimates); :class:`DiffusionUNet` is the
``nn.Module`` that YAML configures (preset + overrides), with SDPA attention and the gradient-checkpointing
switch.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

SD15_PARAMETERS = 859_520_964
"""Parameter count of SD-1.5's U-Net (and of the ``sd15`` preset)."""

PRESETS: dict[str, dict[str, Any]] = {
    "sd15": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "tiny": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
}


def unet_config(preset: str = "sd15", **overrides: Any) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` keyword arguments of ``preset`` with ``overrides`` applied.

    Raises:
        ValueError: Unknown preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset])
    for key, value in overrides.items():
        cfg[key] = tuple(value) if isinstance(value, list) else value
    return cfg


def build_unet(preset: str = "sd15", device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
    """Builds a randomly initialised ``UNet2DConditionModel``.

    Args:
        preset: ``"sd15"`` or ``"tiny"``.
        device: Where to allocate parameters; ``"meta"`` allocates nothing (shape-only model, e.g. to count
            the 859.5M parameters of ``sd15`` without the 3.4 GB of memory).
        **overrides: Any ``UNet2DConditionModel`` argument.
    """
    from diffusers import UNet2DConditionModel

    cfg = unet_config(preset, **overrides)
    if device is None:
        return UNet2DConditionModel(**cfg)
    with torch.device(device):
        return UNet2DConditionModel(**cfg)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on meta-device modules)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class DiffusionUNet(nn.Module):
    """The trainable denoiser ``eps_theta(z_t, t, c)``.

    Args:
        preset: ``"sd15"`` (the paper's 860M U-Net) or ``"tiny"``.
        overrides: ``UNet2DConditionModel`` arguments replacing the preset's (e.g. ``{"cross_attention_dim": 384}``
            for a MiniLM text encoder, ``{"sample_size": 32}`` for 256-px images).
        pretrained: Local folder or hub id of diffusers-format U-Net weights to start from (``None``: random
            init, as in the paper). Exported stage-1 weights load this way.
        subfolder: Sub-folder of ``pretrained`` (``"unet"`` for a pipeline repo).
        sdpa: Use PyTorch's ``scaled_dot_product_attention`` kernels (``AttnProcessor2_0``).
        seed: Seed of the random init, so that every DDP rank builds the same weights even before the broadcast
            (``None``: the global RNG).
    """

    def __init__(
        self,
        preset: str = "sd15",
        overrides: dict[str, Any] | None = None,
        pretrained: str | os.PathLike | None = None,
        subfolder: str | None = None,
        sdpa: bool = True,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.preset = preset
        if pretrained is not None:
            local = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            self.net = UNet2DConditionModel.from_pretrained(
                os.fspath(pretrained), subfolder=subfolder, local_files_only=local
            )
        elif seed is None:
            self.net = build_unet(preset, **(overrides or {}))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = build_unet(preset, **(overrides or {}))
        if sdpa:
            from diffusers.models.attention_processor import AttnProcessor2_0

            self.net.set_attn_processor(AttnProcessor2_0())

    @property
    def in_channels(self) -> int:
        return int(self.net.config.in_channels)

    @property
    def context_dim(self) -> int:
        return int(self.net.config.cross_attention_dim)

    @property
    def sample_size(self) -> int:
        return int(self.net.config.sample_size)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in the backward pass (less memory, about 1/3 more compute)."""
        if enabled:
            self.net.enable_gradient_checkpointing()
        else:
            self.net.disable_gradient_checkpointing()

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicts the noise (or velocity) of noisy latents.

        Args:
            sample: ``(B, C, h, w)`` noisy latents ``z_t``.
            timestep: ``(B,)`` integer timesteps.
            context: ``(B, L, D)`` cross-attention context (``L = 1`` for the paper's one-token conditioning).
            context_mask: ``(B, L)`` bool, True for tokens to attend to; ``None`` attends to all.

        Returns:
            ``(B, C, h, w)`` model prediction.
        """
        out = self.net(
            sample, timestep, encoder_hidden_states=context, encoder_attention_mask=context_mask, return_dict=False
        )[0]  # (B, C, h, w)
        return out

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Saves the U-Net in diffusers format (loadable with ``DiffusionUNet(pretrained=path)``)."""
        self.net.save_pretrained(os.fspath(path))
