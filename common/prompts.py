"""The one prompt-template mechanism of both families: phrases into sentence templates, and prompt-ensemble
embeddings.

Each family keeps its own templates and phrases as data (CLIP-MDC's state phrases in :mod:`clipmdc.prompts`,
stage 2's class phrases in :mod:`diffdefect.stage2.classifier`); both fill them with :func:`fill_templates` and
embed a class as the normalised mean of its prompts' unit embeddings (CLIP's prompt ensembling) with
:func:`prompt_ensemble`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from common.encoders.text import TextEncoder


def fill_templates(templates: Sequence[str], phrases: Sequence[str]) -> list[str]:
    """Every template (one ``{}``) filled with every phrase, phrase by phrase.

    Example:
        >>> fill_templates(["a photo of a {}.", "a {} on a line."], ["scratch"])
        ['a photo of a scratch.', 'a scratch on a line.']
    """
    return [t.format(p) for p in phrases for t in templates]


def prompt_ensemble(encoder: TextEncoder, groups: Sequence[Sequence[str]]) -> torch.Tensor:
    """One embedding per group of prompts: the mean of the prompts' unit embeddings, renormalised.

    Safe inside ``torch.inference_mode()``: the result is an ordinary tensor (usable in training later).

    Args:
        encoder: A frozen text encoder (unit-norm rows).
        groups: ``G`` non-empty lists of prompts.

    Returns:
        ``(G, D)`` float32 unit rows on the encoder's device.
    """
    if not groups:
        return torch.zeros(0, int(encoder.dim), device=encoder.device)
    flat = [p for g in groups for p in g]
    with torch.inference_mode(False), torch.no_grad():
        emb = encoder.encode(flat)  # (sum_g P_g, D) unit rows
        return torch.stack([F.normalize(c.mean(0), dim=-1) for c in emb.split([len(g) for g in groups])]).clone()
