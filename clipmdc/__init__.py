"""CLIP-MDC: CLIP-encoder-based multimodal defect classification and segmentation.

``model`` (network), ``loss`` (dict of terms), ``module`` (thin LightningModule), ``prompts`` (prompt bank),
``presets`` (``tiny``, ``vit_b16``, ``offline_real``), ``regimes`` (supervised / weakly supervised /
normal-only).
"""

from clipmdc.loss import CLIPMDCLoss
from clipmdc.model import CLIPMDC
from clipmdc.output import CLIPMDCOutput
from clipmdc.prompts import PromptBank

__all__ = ["CLIPMDC", "CLIPMDCLoss", "CLIPMDCOutput", "PromptBank"]
