"""Readers on the real datasets in ../shared/data (skipped with a reason on a fresh clone)."""

from __future__ import annotations

from collections import Counter

import pytest

from common.data import NORMAL, ClassIdSegReader, DefectDataModule, MagneticTileReader
from tests.conftest import shared_data

pytestmark = pytest.mark.shared_data


def test_magnetic_tile_counts() -> None:
    recs = MagneticTileReader(shared_data("magnetic_tile")).records()
    assert len(recs) == 1344
    counts = Counter(r.defect_type for r in recs)
    assert counts[NORMAL] == 952 and sum(v for k, v in counts.items() if k != NORMAL) == 392
    assert counts == {NORMAL: 952, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    dm = DefectDataModule(MagneticTileReader(shared_data("magnetic_tile")), image_size=64, num_workers=0)
    assert dm.vocabulary == [NORMAL, "blowhole", "break", "crack", "fray", "uneven"]
    s = dm.dataset("test")[0]
    assert s["image"].shape == (3, 64, 64)


def test_neu_seg_counts() -> None:
    r = ClassIdSegReader(shared_data("neu_seg"), class_names=["inclusion", "patches", "scratches"])
    recs = r.records()
    assert Counter(x.split for x in recs) == {"train": 3129, "val": 894, "test": 447}
    assert {x.defect_type for x in recs} == {"inclusion", "patches", "scratches"}
    assert {c for x in recs for c in x.extra["classes"]} == {"inclusion", "patches", "scratches"}
