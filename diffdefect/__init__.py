"""diffdefect: the IMDD-1M industrial diffusion foundation model.

Stage 1 (this package's ``unet``, ``captioner``, ``conditioning``, ``schedule``, ``model``, ``loss``, ``ema``,
``module``, ``captions``, ``precompute``, ``sampling``): a text-conditioned latent-diffusion U-Net trained from
scratch on industrial image-text pairs, with the implicit captioner that maps CLIP image embeddings to pseudo
text embeddings.
"""

from diffdefect.captioner import ImplicitCaptioner
from diffdefect.conditioning import ConditioningMixer
from diffdefect.ema import EMA
from diffdefect.loss import Stage1Loss
from diffdefect.model import Stage1Inputs, Stage1Model, Stage1Output
from diffdefect.module import Stage1Diffusion
from diffdefect.schedule import NoiseSchedule
from diffdefect.unet import DiffusionUNet, build_unet, unet_config

__all__ = [
    "EMA",
    "ConditioningMixer",
    "DiffusionUNet",
    "ImplicitCaptioner",
    "NoiseSchedule",
    "Stage1Diffusion",
    "Stage1Inputs",
    "Stage1Loss",
    "Stage1Model",
    "Stage1Output",
    "build_unet",
    "unet_config",
]
