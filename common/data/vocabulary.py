"""Class names and ids, one implementation for both model families.

* :func:`readable`: a dataset's folder / label name in words (``"broken_large"`` -> ``"broken large"``), lower
  case: every text encoder we use lower-cases anyway, and caption matching needs one spelling;
* :func:`normalize_vocabulary`: the background / defect-free class :data:`~common.data.types.NORMAL` first;
* :func:`split_entry`, :func:`parse_vocabulary` and :func:`join_vocabulary`: a vocabulary entry is a name or
  ``"name: description"`` (``"fray: torn, frayed edge fibres"``); the description is what a text encoder embeds
  (inside the prompt templates), the name is what is reported, matched to data names and stored;
* :func:`id_mapping` and :func:`remap_ids`: ids into the DataModule's vocabulary -> ids into a model's
  vocabulary, by name (the model may name classes the data lacks, and lack some the data has: ``-1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from common.data.types import NORMAL


def readable(name: str) -> str:
    """``"metal_nut"`` -> ``"metal nut"``; ``"Broken-Large"`` -> ``"broken large"``."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()).lower()


def split_entry(entry: str) -> tuple[str, str | None]:
    """A vocabulary entry's name and description.

    Example:
        >>> split_entry("fray: torn, frayed edge fibres")
        ('fray', 'torn, frayed edge fibres')
        >>> split_entry("scratch")
        ('scratch', None)

    Raises:
        ValueError: No name before the colon, or nothing after it.
    """
    name, colon, description = str(entry).partition(":")
    name, description = name.strip(), description.strip()
    if not name:
        raise ValueError(f"vocabulary entry {entry!r} has no name before ':' (write 'name: description')")
    if colon and not description:
        raise ValueError(f"vocabulary entry {entry!r} has an empty description after ':'")
    return name, (description if colon else None)


def parse_vocabulary(entries: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Names (in order) and ``{name: description}`` of the described ones.

    Raises:
        ValueError: One name given two different descriptions.
    """
    names: list[str] = []
    descriptions: dict[str, str] = {}
    for entry in entries:
        name, description = split_entry(entry)
        if description is not None:
            if descriptions.get(name, description) != description:
                raise ValueError(f"vocabulary name {name!r} has two descriptions: {descriptions[name]!r} and "
                                 f"{description!r}")
            descriptions[name] = description
        names.append(name)
    return names, descriptions


def join_vocabulary(names: Sequence[str], descriptions: Mapping[str, str] | None = None) -> list[str]:
    """The inverse of :func:`parse_vocabulary`: ``"name: description"`` for described names, else the name."""
    descriptions = descriptions or {}
    return [f"{n}: {descriptions[n]}" if n in descriptions else n for n in names]


def normalize_vocabulary(entries: Sequence[str]) -> list[str]:
    """Puts :data:`~common.data.types.NORMAL` at index 0 (added when missing); removes duplicate names (the first
    entry of a name wins). Entries keep their descriptions (:func:`split_entry`).

    Raises:
        ValueError: ``"good"`` appears at another index (ids would silently shift).
    """
    by_name: dict[str, str] = {}
    for entry in entries:
        by_name.setdefault(split_entry(entry)[0], str(entry).strip())
    names = list(by_name)
    if NORMAL in names and names[0] != NORMAL:
        raise ValueError(f"the normal class {NORMAL!r} must be first in the vocabulary, got {names}")
    out = list(by_name.values())
    return out if names and names[0] == NORMAL else [NORMAL, *out]


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
