"""Tiny stage-1 presets (random init, built in well under a second on a CPU) for tests and smoke runs."""

from __future__ import annotations

import torch

from diffdefect.stage1.model import Stage1Model


def tiny_stage1(seed: int = 0) -> Stage1Model:
    """The random-init tiny stage-1 model of ``configs/diffdefect/stage1_tiny.yaml`` (smoke tests).

    2-level U-Net (32/64 channels, 32-d context), tiny 2x VAE, :class:`~common.encoders.TinyText` (32-d), a
    ``test_vit`` image encoder (64-d) and a 64 -> 32 captioner.
    """
    from common.encoders import TimmImage, TinyText
    from common.encoders.vae import FrozenVAE
    from diffdefect.stage1.captioner import ImplicitCaptioner
    from diffdefect.stage1.unet import DiffusionUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Stage1Model(
            unet=DiffusionUNet("tiny", seed=seed),
            vae=FrozenVAE(preset="tiny", seed=seed),
            text_encoder=TinyText(32, seed=seed),
            image_encoder=TimmImage("test_vit", image_size=32, layers=[2]),
            captioner=ImplicitCaptioner(64, 32, 32),
        )
