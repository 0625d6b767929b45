"""Loading a trained stage 1: the :class:`~diffdefect.stage1.module.Stage1Module` of a ``lightning fit``
checkpoint (its stored config rebuilds the model) or of any checkpoint plus a YAML config, with the EMA weights
swapped in by default. Used by sampling and by stage 2's feature extractor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.config import instantiate, load_config


def load_stage1(ckpt: str | Path, config: str | Path | Sequence[str | Path] | None = None, ema: bool = True,
                map_location: str = "cpu") -> Any:
    """Loads a trained :class:`~diffdefect.stage1.module.Stage1Module`.

    Args:
        ckpt: A checkpoint from ``lightning fit`` (holds the model config) or any checkpoint with ``config``.
        config: YAML file(s) with a ``model:`` section (e.g. the ``config.yaml`` LightningCLI saved, or
            ``configs/stage1_diffusion.yaml`` and its overlays, stacked as ``--config`` stacks them; read with
            :func:`common.config.load_config`); needed when the checkpoint was written by a module built in Python.
        ema: Swap the EMA weights in (when the checkpoint has them).
        map_location: Where to load tensors.
    """
    from diffdefect.stage1.module import Stage1Module

    if config is None:
        module = Stage1Module.load_from_checkpoint(str(ckpt), map_location=map_location, weights_only=False)
    else:
        cfg = load_config(config)
        module = instantiate(cfg.get("model", cfg), Stage1Module)
        state = torch.load(str(ckpt), map_location=map_location, weights_only=False)
        module.load_state_dict(state["state_dict"])
        module.on_load_checkpoint(state)
    if ema:
        module.use_ema_weights()
    return module.eval()
