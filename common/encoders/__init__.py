"""Frozen image/text encoders behind small interfaces shared by both model families: one for images and
feature maps (:class:`ImageEncoder`), one for text (:class:`TextEncoder`).

Nothing here imports ``clipmdc`` or ``diffdefect``.
"""

from common.encoders.backbone import TimmBackbone, create_timm_model
from common.encoders.clip_text import CLIPTextEncoder
from common.encoders.frozen import FrozenEncoder
from common.encoders.image import (
    EfficientNetFeatures,
    FeatureExtractor,
    ImageEncoder,
    ImageFeatures,
    OpenCLIPImage,
    TimmImage,
)
from common.encoders.open_clip_loader import load_open_clip, save_open_clip
from common.encoders.text import MiniLMText, OpenCLIPText, TextEncoder, TinyText
from common.encoders.vae import FrozenVAE

__all__ = [
    "CLIPTextEncoder",
    "EfficientNetFeatures",
    "FeatureExtractor",
    "FrozenVAE",
    "FrozenEncoder",
    "ImageEncoder",
    "ImageFeatures",
    "MiniLMText",
    "OpenCLIPImage",
    "OpenCLIPText",
    "TextEncoder",
    "TimmBackbone",
    "TimmImage",
    "TinyText",
    "create_timm_model",
    "load_open_clip",
    "save_open_clip",
]
