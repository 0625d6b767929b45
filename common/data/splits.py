"""Seeded, deterministic splitting and exact few-shot subsetting of record lists."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from common.data.errors import DataError
from common.data.types import SampleRecord


def _stratum(rec: SampleRecord) -> tuple[str, str]:
    return rec.object_name, rec.defect_type


def _groups(records: Sequence[SampleRecord], key: Callable[[SampleRecord], Hashable]) -> dict:
    groups: dict = defaultdict(list)
    for rec in sorted(records, key=lambda r: str(r.image_path)):
        groups[key(rec)].append(rec)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def stratified_split(
    records: Sequence[SampleRecord], ratios: Sequence[float], seed: int = 0
) -> list[list[SampleRecord]]:
    """Splits records into ``len(ratios)`` parts with the given ratios within every (object, defect type).

    The result depends only on the set of records (sorted by path), the ratios and the seed: never on listing
    order or on the machine. Each part of a stratum with at least ``len(ratios)`` samples gets at least one.

    Args:
        records: Records to split.
        ratios: Fractions, e.g. ``(0.6, 0.2, 0.2)``; normalised to sum to 1.
        seed: Seed of the permutation.

    Returns:
        One list of records per ratio, each sorted by path.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or len(r) == 0 or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"split ratios must be non-negative and sum to > 0, got {list(ratios)}")
    r = r / r.sum()
    parts: list[list[SampleRecord]] = [[] for _ in r]
    for i, (_, group) in enumerate(_groups(records, _stratum).items()):
        rng = np.random.default_rng([seed, i])
        order = rng.permutation(len(group))
        n = len(group)
        counts = np.floor(r * n).astype(int)
        # hand out the remainder by largest fractional part, then make non-empty parts where possible
        rest = n - counts.sum()
        for j in np.argsort(-(r * n - counts), kind="stable")[:rest]:
            counts[j] += 1
        for j in range(len(r)):
            if counts[j] == 0 and r[j] > 0 and n >= len(r):
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[j] += 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for j in range(len(r)):
            parts[j].extend(group[k] for k in order[bounds[j] : bounds[j + 1]])
    return [sorted(p, key=lambda x: str(x.image_path)) for p in parts]


def few_shot(
    records: Sequence[SampleRecord], shots: int, seed: int = 0, per: str = "defect_type"
) -> list[SampleRecord]:
    """Keeps exactly ``shots`` records per class.

    Args:
        records: Records to subset.
        shots: Records kept per class.
        seed: Seed of the choice.
        per: ``"defect_type"`` (classes across objects) or ``"object_defect"`` (each object x defect type).

    Raises:
        DataError: A class has fewer than ``shots`` records (names the class and its count).
    """
    if shots <= 0:
        raise ValueError(f"few_shot must be a positive number of samples per class, got {shots}")
    key = (lambda r: r.defect_type) if per == "defect_type" else _stratum
    out: list[SampleRecord] = []
    for i, (name, group) in enumerate(_groups(records, key).items()):
        if len(group) < shots:
            raise DataError(f"few-shot: class {name!r} has only {len(group)} training samples, {shots} requested")
        rng = np.random.default_rng([seed, 7919, i])
        out.extend(group[k] for k in sorted(rng.choice(len(group), size=shots, replace=False)))
    return sorted(out, key=lambda x: str(x.image_path))
