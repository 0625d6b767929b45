"""Loading open_clip models from a pretrained tag (downloads) or a local checkpoint file (offline).

Both go through ``open_clip.create_model(model_name, pretrained=...)``, which accepts either a tag known to
open_clip (``"laion2b_s34b_b88k"``, ``"openai"``: downloaded, then loaded from the cache file) or the path of
a checkpoint file (loaded directly): a file saved from ``model.state_dict()`` or downloaded by hand takes the
same ``load_checkpoint`` path as a tag's cached download. Nothing here downloads unless a tag is given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn


def load_open_clip(
    model_name: str = "ViT-B-16", pretrained: str | os.PathLike | None = None, **kwargs: Any
) -> nn.Module:
    """Creates an open_clip model and loads its weights.

    Args:
        model_name: An open_clip architecture name (``open_clip.list_models()``), or one registered with
            ``open_clip.add_model_config``, or a ``"local-dir:/path"`` / ``"hf-hub:org/repo"`` identifier.
        pretrained: ``None`` (random init), an open_clip pretrained tag (needs internet or the HF cache), or
            the path of a local checkpoint file (``.pt``/``.bin``/``.safetensors`` state dict).
        **kwargs: Passed to ``open_clip.create_model`` (e.g. ``force_image_size``, ``precision``).

    Returns:
        The model in eval mode, on CPU.

    Raises:
        FileNotFoundError: ``pretrained`` looks like a path (has a separator or a checkpoint suffix) but no such
            file exists (instead of open_clip's attempt to treat it as a tag).
    """
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        looks_like_path = os.sep in pretrained or Path(pretrained).suffix in {
            ".pt",
            ".pth",
            ".bin",
            ".safetensors",
        }
        if looks_like_path and not Path(pretrained).is_file():
            raise FileNotFoundError(f"open_clip checkpoint file not found: {pretrained}")
    model = open_clip.create_model(model_name, pretrained=pretrained or None, **kwargs)
    return model.eval()


def open_clip_tokenizer(model_name: str = "ViT-B-16") -> Any:
    """The tokenizer open_clip pairs with ``model_name`` (CLIP's BPE tokenizer ships with open_clip)."""
    return open_clip.get_tokenizer(model_name)


def save_open_clip(model: nn.Module, path: str | os.PathLike) -> Path:
    """Saves ``model.state_dict()`` so that :func:`load_open_clip` (``pretrained=path``) loads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
