"""Class names and ids, one implementation for both model families.

* :func:`readable`: a dataset's folder / label name in words (``"broken_large"`` -> ``"broken large"``), lower
  case: every text encoder we use lower-cases anyway, and caption matching needs one spelling;
* :func:`normalize_vocabulary`: the background / defect-free class :data:`~common.data.types.NORMAL` first;
* :func:`id_mapping` and :func:`remap_ids`: ids into the DataModule's vocabulary -> ids into a model's
  vocabulary, by name (the model may name classes the data lacks, and lack some the data has: ``-1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.data.types import NORMAL


def readable(name: str) -> str:
    """``"metal_nut"`` -> ``"metal nut"``; ``"Broken-Large"`` -> ``"broken large"``."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()).lower()


def normalize_vocabulary(names: Sequence[str]) -> list[str]:
    """Puts :data:`~common.data.types.NORMAL` at index 0 (added when missing); removes duplicates.

    Raises:
        ValueError: ``"good"`` appears at another index (ids would silently shift).
    """
    names = list(dict.fromkeys(names))
    if NORMAL in names and names[0] != NORMAL:
        raise ValueError(f"the normal class {NORMAL!r} must be first in the vocabulary, got {names}")
    return names if names and names[0] == NORMAL else [NORMAL, *names]


def id_mapping(data_names: Sequence[str], model_names: Sequence[str]) -> torch.Tensor:
    """``(K_data,)`` int64: the model id of each data class (-1 where the model vocabulary lacks it)."""
    index = {n: i for i, n in enumerate(model_names)}
    return torch.tensor([index.get(n, -1) for n in data_names], dtype=torch.long)


def remap_ids(ids: torch.Tensor, mapping: torch.Tensor | None) -> torch.Tensor:
    """Maps data ids (any shape) to model ids with :func:`id_mapping`'s table; negative ids (unknown) stay as
    they are, ``mapping=None`` (same vocabulary) returns ``ids`` unchanged."""
    if mapping is None:
        return ids
    mapping = mapping.to(ids.device)
    return torch.where(ids >= 0, mapping[ids.clamp(min=0)], ids)
