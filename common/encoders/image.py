"""The one frozen-feature interface, :class:`ImageEncoder`, and its timm / open_clip implementations.

The contract (ODISE's ``FeatureExtractor``): images ``(B, 3, H, W)`` in [0, 1] go to feature maps ("tokens") and a
global embedding, :class:`ImageFeatures`; the encoder declares ``feature_dims`` and ``feature_strides`` of its maps,
``embed_dim`` of the embedding, and the input size it resizes to (``image_size``, ``None`` for any size that is a
multiple of ``size_multiple``); its weights sit in a :class:`~common.encoders.frozen.FrozenEncoder` (eval mode, no
gradients, not in checkpoints) and its output is a function of the image (what feature caches rely on). Both
families take any implementation through this one door: CLIP-MDC's patch tokens and embedding, stage 2's
multi-scale maps (``forward(image, embedding=False)`` lets an encoder skip the global head), stage 1's
captioner input.

* :class:`OpenCLIPImage`: an open_clip ViT (``forward_intermediates``); tokens of the chosen blocks, by
  default passed through the tower's own ``ln_post`` + ``proj`` into the joint image-text space.
* :class:`TimmImage`: any timm model with ``forward_intermediates`` (EfficientNet-Lite0 with the packaged
  ImageNet weights for the offline configuration; ``test_vit`` for tests); the multi-stage maps are the
  "tokens", the pre-logits vector the global embedding. :class:`EfficientNetFeatures` is its four-level
  (strides 4 to 32) preset, stage 2's ImageNet baseline.
* ``diffdefect.DiffusionFeatures``: the frozen stage-1 diffusion model, stage 2's extractor (the paper).

Every encoder applies its own resize/normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.encoders.backbone import create_timm_model, timm_mean_std
from common.encoders.frozen import FrozenEncoder
from common.encoders.open_clip_loader import load_open_clip
from common.encoders.text import TextEncoder

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageFeatures:
    """What an image encoder gives.

    Attributes:
        tokens: One ``(B, C_l, h_l, w_l)`` map per selected layer (patch tokens laid out on their grid).
        embedding: ``(B, D_g)`` global image embedding (``None`` when not asked for).
    """

    tokens: list[torch.Tensor]
    embedding: torch.Tensor | None


def _pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


class ImageEncoder(nn.Module):
    """The frozen-feature interface (module docstring).

    Subclasses set the attributes below in ``__init__`` (:meth:`_setup_io` probes them for normalising encoders)
    and implement :meth:`_features`.

    Attributes:
        feature_dims: Channels ``C_l`` of each feature map (fine to coarse for pyramids).
        feature_strides: Pixel stride of each map relative to the encoder's input after its own resize.
        embed_dim: Size ``D_g`` of the global embedding.
        image_size: ``(H, W)`` the input is resized to, or ``None`` (any size, multiples of
            :attr:`size_multiple`).
    """

    feature_dims: list[int]
    feature_strides: list[int]
    embed_dim: int
    image_size: tuple[int, int] | None

    def _setup_io(
        self, mean: Sequence[float], std: Sequence[float], image_size: Any, probe: int = 64
    ) -> None:
        self.image_size = _pair(image_size)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        probe_hw = self.image_size or (probe, probe)
        feats = self(torch.zeros(1, 3, *probe_hw))
        self.feature_dims = [t.shape[1] for t in feats.tokens]
        self.feature_strides = [max(1, round(probe_hw[1] / t.shape[-1])) for t in feats.tokens]
        self.embed_dim = int(feats.embedding.shape[-1])

    # the words each family uses for the same lists
    @property
    def token_dims(self) -> list[int]:
        """:attr:`feature_dims` (CLIP-MDC's name)."""
        return self.feature_dims

    @property
    def channels(self) -> list[int]:
        """:attr:`feature_dims` (stage 2's name)."""
        return self.feature_dims

    @property
    def strides(self) -> list[int]:
        """:attr:`feature_strides`."""
        return self.feature_strides

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (the coarsest stride; 1 when the encoder resizes)."""
        return 1 if self.image_size is not None else max(self.feature_strides)

    @property
    def text_encoder(self) -> TextEncoder | None:
        """The family's frozen text encoder when the encoder carries one (an open-vocabulary classifier then
        borrows it), else ``None``."""
        return None

    def cache_key(self) -> str:
        """A string identifying the encoder's settings (part of a feature-cache key)."""
        return f"{type(self).__name__}:{self.feature_dims}:{self.feature_strides}"

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Resizes (when the encoder has a fixed size) and normalises ``(B, 3, H, W)`` images in [0, 1]."""
        if self.image_size is not None and tuple(image.shape[-2:]) != self.image_size:
            image = F.interpolate(
                image, size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def _features(self, x: torch.Tensor, embedding: bool = True) -> ImageFeatures:
        """The features of preprocessed images (``embedding=False``: the embedding may be left ``None``)."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor, embedding: bool = True) -> ImageFeatures:
        """Encodes images.

        Args:
            image: ``(B, 3, H, W)`` in [0, 1].
            embedding: Also compute the global embedding (``False``: the maps alone, where that is cheaper).

        Returns:
            :class:`ImageFeatures`: tokens ``[(B, C_l, h_l, w_l)]`` and embedding ``(B, D_g)`` (or ``None`` with
            ``embedding=False``), without gradient.
        """
        with torch.no_grad():
            return self._features(self.preprocess(image), embedding)


class OpenCLIPImage(ImageEncoder):
    """Image tower of an open_clip ViT.

    Args:
        model_name: open_clip architecture (``"ViT-B-16"``) or a registered / ``local-dir:`` name.
        pretrained: ``None`` (random), an open_clip tag (downloads) or a local checkpoint file.
        layers: 0-based transformer blocks whose patch tokens are returned (open_clip's
            ``forward_intermediates(indices=...)``); ViT-B-16 has blocks 0..11.
        project_tokens: Map the tokens into the joint space with the tower's own ``ln_post`` and ``proj``
            (as the global embedding is), so that they can be compared with text embeddings directly.
        image_size: Input size; ``None`` uses the model's own (224 for ViT-B-16; position embeddings are
            not interpolated).
        clip_model: An already-loaded open_clip model to take the tower from (Python use; YAML leaves it
            ``None``).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str | None = None,
        layers: Sequence[int] = (2, 5, 8, 11),
        project_tokens: bool = True,
        image_size: int | None = None,
        clip_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = pretrained
        self.layers = [int(i) for i in layers]
        self.project_tokens = project_tokens
        clip_model = clip_model if clip_model is not None else load_open_clip(model_name, pretrained)
        visual = clip_model.visual
        self.visual = FrozenEncoder(visual)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        mean, std = cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD)
        self._setup_io(mean, std, image_size or getattr(visual, "image_size", 224))

    def _features(self, x: torch.Tensor, embedding: bool = True) -> ImageFeatures:
        visual = self.visual.module
        out = visual.forward_intermediates(
            x, indices=self.layers, normalize_intermediates=self.project_tokens, output_fmt="NCHW"
        )
        tokens = out["image_intermediates"]  # [(B, width, h, w)]
        if self.project_tokens and getattr(visual, "proj", None) is not None:
            tokens = [torch.einsum("bchw,cd->bdhw", t, visual.proj) for t in tokens]  # [(B, D, h, w)]
        return ImageFeatures(tokens=list(tokens), embedding=out["image_features"])


class TimmImage(ImageEncoder):
    """A frozen timm model as image encoder (multi-stage maps as tokens, pre-logits vector as embedding).

    Args:
        model_name: timm architecture with ``forward_intermediates`` (``"efficientnet_lite0"``,
            ``"test_vit"``...).
        weights: ``None``, ``"timm"``, ``"efficientnet_lite0_package"`` or a state-dict file (see
            :func:`~common.encoders.backbone.create_timm_model`).
        layers: ``forward_intermediates`` indices (EfficientNet: feature levels 0..4 = strides 2..32; ViT:
            blocks).
        image_size: Resize inputs to this size first; ``None`` keeps the input size.
        mean: Override of the normalisation mean (default: the weights' own).
        std: Override of the normalisation std.
        model_kwargs: Further ``timm.create_model`` arguments (e.g. ``{"dynamic_img_size": true}`` for ViTs).
    """

    def __init__(
        self,
        model_name: str = "efficientnet_lite0",
        weights: str | None = None,
        layers: Sequence[int] = (2, 3, 4),
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.weights = weights
        self.layers = [int(i) for i in layers]
        model = create_timm_model(model_name, weights, **(model_kwargs or {}))
        self.model = FrozenEncoder(model)
        own_mean, own_std = timm_mean_std(model, weights)
        self._setup_io(mean or own_mean, std or own_std, image_size)

    def cache_key(self) -> str:
        return f"{super().cache_key()}:{self.model_name}:{self.weights}:{self.layers}:{self.image_size}"

    def _features(self, x: torch.Tensor, embedding: bool = True) -> ImageFeatures:
        model = self.model.module
        if not embedding:  # the maps alone: stop after the deepest requested level
            tokens = model.forward_intermediates(x, indices=self.layers, intermediates_only=True, stop_early=True)
            return ImageFeatures(tokens=list(tokens), embedding=None)
        final, tokens = model.forward_intermediates(x, indices=self.layers, intermediates_only=False)
        return ImageFeatures(tokens=list(tokens), embedding=model.forward_head(final, pre_logits=True))  # (B, D_g)


class EfficientNetFeatures(TimmImage):
    """A frozen timm EfficientNet pyramid, four levels at strides 4, 8, 16, 32 (stage 2's ImageNet baseline).

    timm ``feature_info`` indices 1..4 (EfficientNet-Lite0: 24, 40, 112, 320 channels), the four resolutions
    Mask2Former takes from a ResNet.

    Args:
        model_name: timm architecture (``"efficientnet_lite0"``; ``"test_efficientnet"`` for fast tests).
        weights: ``"efficientnet_lite0_package"`` (ImageNet weights of the installed package, offline), ``None``
            (random), ``"timm"`` or a state-dict file.
        levels: ``feature_info`` indices of the returned levels (fine to coarse).
        text_encoder: Optional frozen text encoder offered to an open-vocabulary classifier.
    """

    def __init__(
        self,
        model_name: str = "efficientnet_lite0",
        weights: str | None = "efficientnet_lite0_package",
        levels: Sequence[int] = (1, 2, 3, 4),
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__(model_name, weights=weights, layers=levels)
        self.levels = list(self.layers)
        self._text_encoder = text_encoder

    @property
    def text_encoder(self) -> TextEncoder | None:
        return self._text_encoder


FeatureExtractor = ImageEncoder
"""The same interface under ODISE's name (stage 2 calls its frozen features an extractor)."""
