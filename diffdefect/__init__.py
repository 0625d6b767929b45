"""diffdefect: the IMDD-1M industrial diffusion foundation model.

Stage 1 (this package's ``unet``, ``captioner``, ``conditioning``, ``schedule``, ``model``, ``loss``, ``ema``,
``module``, ``captions``, ``precompute``, ``sampling``): a text-conditioned latent-diffusion U-Net trained from
scratch on industrial image-text pairs, with the implicit captioner that maps CLIP image embeddings to pseudo
text embeddings.

Stage 2 (``features``, ``diffusion_features``, ``feature_cache``, ``mask2former``, ``matcher``, ``criterion``,
``open_vocab``, ``stage2_data``, ``stage2_model``, ``stage2_inference``, ``stage2_module``): the frozen diffusion
features under a Mask2Former head whose masks are classified by dot products with text embeddings of category
names given in words (open vocabulary).
"""

from diffdefect.captioner import ImplicitCaptioner
from diffdefect.conditioning import ConditioningMixer
from diffdefect.criterion import SetCriterion
from diffdefect.diffusion_features import DiffusionFeatures
from diffdefect.ema import EMA
from diffdefect.feature_cache import FeatureCache
from diffdefect.features import EfficientNetFeatures, FeatureExtractor
from diffdefect.loss import Stage1Loss
from diffdefect.mask2former import Mask2FormerHead
from diffdefect.matcher import HungarianMatcher
from diffdefect.model import Stage1Inputs, Stage1Model, Stage1Output
from diffdefect.module import Stage1Diffusion
from diffdefect.open_vocab import OpenVocabClassifier
from diffdefect.schedule import NoiseSchedule
from diffdefect.stage2_model import Stage2Model, Stage2Output
from diffdefect.stage2_module import Stage2OpenVocab
from diffdefect.unet import DiffusionUNet, build_unet, unet_config

__all__ = [
    "EMA",
    "ConditioningMixer",
    "DiffusionFeatures",
    "DiffusionUNet",
    "EfficientNetFeatures",
    "FeatureCache",
    "FeatureExtractor",
    "HungarianMatcher",
    "ImplicitCaptioner",
    "Mask2FormerHead",
    "NoiseSchedule",
    "OpenVocabClassifier",
    "SetCriterion",
    "Stage1Diffusion",
    "Stage1Inputs",
    "Stage1Loss",
    "Stage1Model",
    "Stage1Output",
    "Stage2Model",
    "Stage2OpenVocab",
    "Stage2Output",
    "build_unet",
    "unet_config",
]
