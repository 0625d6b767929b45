"""The frozen multi-scale feature extractors that stage 2's mask generator sits on.

One interface, :class:`FeatureExtractor`, two implementations, so that the same Mask2Former head can be trained
on either and the value of the diffusion features is measured, not assumed:

* :class:`~diffdefect.stage2.extractor.DiffusionFeatures`: the frozen stage-1 diffusion model (the paper);
* :class:`EfficientNetFeatures`: a frozen timm EfficientNet-Lite0 with the packaged ImageNet weights (the
  baseline of the stage-2 benchmark).

An extractor maps images ``(B, 3, H, W)`` in [0, 1] to a list of maps ordered from fine to coarse,
``[(B, channels[l], H / strides[l], W / strides[l])]``. It is frozen (every weight inside a
:class:`~common.encoders.frozen.FrozenEncoder`: eval mode, no gradients, not in checkpoints) and deterministic (a
function of the image only), which is what lets :mod:`diffdefect.stage2.cache` reuse its outputs across epochs.
It may carry the text encoder of its family (:attr:`FeatureExtractor.text_encoder`), which the open-vocabulary
classifier then uses for the category names unless given its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from common.encoders.image import TimmImage
from common.encoders.text import TextEncoder


class FeatureExtractor(nn.Module):
    """Interface of the frozen stage-2 feature extractors.

    Subclasses set :attr:`channels` and :attr:`strides` in ``__init__`` and implement :meth:`extract`.

    Attributes:
        channels: Channels of each level, fine to coarse.
        strides: Pixel stride of each level (input side / map side), fine to coarse.
    """

    channels: list[int]
    strides: list[int]

    @property
    def text_encoder(self) -> TextEncoder | None:
        """The family's frozen text encoder (``None`` when the extractor has none)."""
        return None

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (the coarsest stride)."""
        return max(self.strides)

    def cache_key(self) -> str:
        """A string identifying the extractor's settings (part of the feature-cache key)."""
        return f"{type(self).__name__}:{self.channels}:{self.strides}"

    def extract(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Computes the feature maps (subclasses implement it).

        Args:
            image: ``(B, 3, H, W)`` in [0, 1], sides multiples of :attr:`size_multiple`.

        Returns:
            ``[(B, channels[l], H / strides[l], W / strides[l])]``, fine to coarse, float32.
        """
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`extract` without gradients (safe inside ``torch.inference_mode``)."""
        h, w = image.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"image sides {h}x{w} must be multiples of {m} (the coarsest feature stride)")
        with torch.no_grad():
            feats = self.extract(image)
        return [f.float() for f in feats]


class EfficientNetFeatures(FeatureExtractor):
    """A frozen timm EfficientNet as the stage-2 feature extractor (the benchmark's ImageNet baseline).

    Levels: timm ``feature_info`` indices 1..4 = strides 4, 8, 16, 32 (EfficientNet-Lite0: 24, 40, 112, 320
    channels), i.e. the four resolutions Mask2Former takes from a ResNet. The network sits in
    :class:`~common.encoders.image.TimmImage` (a :class:`~common.encoders.frozen.FrozenEncoder` inside), which
    also normalises the input for the weights.

    Args:
        model_name: timm architecture (``"efficientnet_lite0"``; ``"test_efficientnet"`` for fast tests).
        weights: ``"efficientnet_lite0_package"`` (ImageNet weights of the installed package, offline), ``None``
            (random), ``"timm"`` or a state-dict file.
        levels: ``feature_info`` indices of the returned levels (fine to coarse).
        text_encoder: Optional frozen text encoder offered to the open-vocabulary classifier.
    """

    def __init__(
        self,
        model_name: str = "efficientnet_lite0",
        weights: str | None = "efficientnet_lite0_package",
        levels: Sequence[int] = (1, 2, 3, 4),
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.weights = weights
        self.levels = [int(i) for i in levels]
        self.encoder = TimmImage(model_name, weights=weights, layers=self.levels)
        info = self.encoder.model.module.feature_info
        self.channels = [int(info[i]["num_chs"]) for i in self.levels]
        self.strides = [int(info[i]["reduction"]) for i in self.levels]
        self._text_encoder = text_encoder

    @property
    def text_encoder(self) -> TextEncoder | None:
        return self._text_encoder

    def cache_key(self) -> str:
        return f"{super().cache_key()}:{self.model_name}:{self.weights}:{self.levels}"

    def extract(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.encoder.preprocess(image)  # (B, 3, H, W) normalised for the weights
        model = self.encoder.model.module
        feats = model.forward_intermediates(x, indices=self.levels, intermediates_only=True, stop_early=True)
        return list(feats)  # fine -> coarse
