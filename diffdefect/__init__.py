"""diffdefect: the IMDD-1M industrial diffusion foundation model.

Stage 1 (:mod:`diffdefect.stage1`): a text-conditioned latent-diffusion U-Net trained from
scratch on industrial image-text pairs, with the implicit captioner that maps CLIP image embeddings to pseudo
text embeddings.

Stage 2 (:mod:`diffdefect.stage2`): the frozen diffusion
features under a Mask2Former head whose masks are classified by dot products with text embeddings of category
names given in words (open vocabulary).
"""

from common.encoders.image import EfficientNetFeatures, FeatureExtractor
from diffdefect.stage1.captioner import ImplicitCaptioner
from diffdefect.stage1.conditioning import ConditioningMixer
from diffdefect.stage1.ema import EMA
from diffdefect.stage1.loss import Stage1Loss
from diffdefect.stage1.model import Stage1Inputs, Stage1Model, Stage1Output
from diffdefect.stage1.module import Stage1Diffusion, Stage1Module
from diffdefect.stage1.schedule import NoiseSchedule
from diffdefect.stage1.unet import DiffusionUNet, build_unet, unet_config
from diffdefect.stage2.cache import FeatureCache
from diffdefect.stage2.classifier import OpenVocabClassifier
from diffdefect.stage2.criterion import SetCriterion
from diffdefect.stage2.extractor import DiffusionFeatures
from diffdefect.stage2.head import Mask2FormerHead
from diffdefect.stage2.matcher import HungarianMatcher
from diffdefect.stage2.model import Stage2Model, Stage2Output
from diffdefect.stage2.module import Stage2Module, Stage2OpenVocab

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
    "Stage1Module",
    "Stage1Model",
    "Stage1Output",
    "Stage2Model",
    "Stage2Module",
    "Stage2OpenVocab",
    "Stage2Output",
    "build_unet",
    "unet_config",
]
