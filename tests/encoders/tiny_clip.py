"""A tiny open_clip architecture registered under a test name (random init, built in milliseconds)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip

TINY_CLIP = "defectfm-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> str:
    """Registers :data:`TINY_CLIP` with open_clip (idempotent) and returns its name."""
    if TINY_CLIP not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="tiny_clip_"))
        (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
        open_clip.add_model_config(folder)
    return TINY_CLIP
