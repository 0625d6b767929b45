"""Frozen image/text encoders behind one small interface, shared by both model families.

Nothing here imports ``clipmdc`` or ``diffdefect``.
"""

from common.encoders.backbone import TimmBackbone, create_timm_model
from common.encoders.clip_text import CLIPTextEncoder
from common.encoders.frozen import FrozenEncoder
from common.encoders.image import ImageEncoder, ImageFeatures, OpenCLIPImage, TimmImage
from common.encoders.open_clip_loader import load_open_clip, save_open_clip
from common.encoders.text import MiniLMText, OpenCLIPText, TextEncoder, TinyText
from common.encoders.vae import FrozenVAE

__all__ = [
    "CLIPTextEncoder",
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
