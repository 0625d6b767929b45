"""Seeded, deterministic splitting and exact few-shot subsetting of record lists."""

from __future__ import annotations

import re
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


def record_groups(records: Sequence[SampleRecord], key: str | None = None, pattern: str | None = None
                  ) -> Callable[[SampleRecord], str] | None:
    r"""The function naming the physical part (group) of a record, or ``None`` when no grouping is asked for.

    Args:
        records: The records (checked: every one must have a group).
        key: Name of the record's ``extra`` entry holding its group: a ``group`` column of a folder reader's labels
            CSV, or the sub-folder in its ``groups`` layout (e.g. KolektorSDD's ``kos01/``).
        pattern: A regular expression searched in the image path; the group is its first capture group (the
            whole match without one), e.g. ``r"(kos\d+)"`` or ``r"part_(\d+)_"``.

    Raises:
        DataError: A record has no such entry, or the pattern does not match its path (names the file).
    """
    if key is None and pattern is None:
        return None
    if key is not None and pattern is not None:
        raise ValueError("give group_key or group_pattern, not both")
    regex = re.compile(pattern) if pattern is not None else None

    def group(rec: SampleRecord) -> str:
        if regex is None:
            value = rec.extra.get(key) if rec.extra else None
            if value in (None, ""):
                raise DataError(f"{rec.image_path}: no {key!r} entry to group it by (a '{key}' column of the labels "
                                "CSV, or the sub-folder of a groups layout)")
            return str(value)
        m = regex.search(str(rec.image_path))
        if m is None:
            raise DataError(f"{rec.image_path}: group_pattern {pattern!r} does not match its path")
        return m.group(1) if m.groups() else m.group(0)

    for rec in records:
        group(rec)  # every record must have one: fail early, naming the file
    return group


def _unit_stratum(unit: list[SampleRecord]) -> tuple[str, str]:
    """Stratum of a group of records: its object and its first defect type in name order (normal when none)."""
    types = sorted({r.defect_type for r in unit} - {"good"})
    return unit[0].object_name, types[0] if types else "good"


def stratified_split(
    records: Sequence[SampleRecord], ratios: Sequence[float], seed: int = 0,
    group: Callable[[SampleRecord], Hashable] | None = None,
) -> list[list[SampleRecord]]:
    """Splits records into ``len(ratios)`` parts with the given ratios within every (object, defect type).

    The result depends only on the set of records (sorted by path), the ratios and the seed: never on listing
    order or on the machine. Each part of a stratum with at least ``len(ratios)`` samples gets at least one.
    With ``group`` (:func:`record_groups`), whole groups (e.g. the photographs of one physical part) are split:
    every record of a group lands in the same part, the ratios count groups.

    Args:
        records: Records to split.
        ratios: Fractions, e.g. ``(0.6, 0.2, 0.2)``; normalised to sum to 1.
        seed: Seed of the permutation.
        group: Names each record's group; ``None``: every record is its own group.

    Returns:
        One list of records per ratio, each sorted by path.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or len(r) == 0 or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"split ratios must be non-negative and sum to > 0, got {list(ratios)}")
    r = r / r.sum()
    if group is None:
        units = [[rec] for rec in sorted(records, key=lambda x: str(x.image_path))]
    else:
        units = [sorted(u, key=lambda x: str(x.image_path)) for u in _groups(records, group).values()]
    strata: dict = defaultdict(list)
    for unit in units:
        strata[_unit_stratum(unit) if group is not None else _stratum(unit[0])].append(unit)
    parts: list[list[SampleRecord]] = [[] for _ in r]
    for i, (_, members) in enumerate(sorted(strata.items(), key=lambda kv: str(kv[0]))):
        rng = np.random.default_rng([seed, i])
        order = rng.permutation(len(members))
        n = len(members)
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
            for k in order[bounds[j] : bounds[j + 1]]:
                parts[j].extend(members[k])
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
