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


# ----------------------------------------------------------------------------- the configs/data snippets
def config_reader(name: str):
    """The reader of configs/data/<name>.yaml on the real data (root made absolute; skipped when absent)."""
    from common.data.reader_config import build_reader, reader_node
    from tests.conftest import REPO, SHARED_DATA

    node = reader_node(REPO / "configs" / "data" / f"{name}.yaml")
    rel = node["init_args"]["root"].removeprefix("../shared/data/")
    shared_data(rel.split("/")[0])
    node["init_args"]["root"] = str(SHARED_DATA / rel)
    return build_reader(node, name)


def test_config_magnetic_tile_and_neu_seg_counts() -> None:
    recs = config_reader("magnetic_tile").records()
    assert len(recs) == 1344 and sum(r.is_anomalous for r in recs) == 392
    recs = config_reader("neu_seg").records()
    assert Counter(x.split for x in recs) == {"train": 3129, "val": 894, "test": 447}
    assert not any(r.is_anomalous is False for r in recs)  # SOURCE: every image has a defect


def test_config_crackforest_counts() -> None:
    reader = config_reader("crackforest")
    recs = reader.records()
    assert len(recs) == 118 and len(reader.left_out) == 37  # SOURCE: 118 labelled + 37 unlabelled
    assert {r.defect_type for r in recs} == {"crack"} and all(r.is_anomalous for r in recs)


def test_config_masonry_counts() -> None:
    recs = config_reader("masonry_crack").records()
    assert len(recs) == 240 and all(r.is_anomalous and r.defect_type == "crack" for r in recs)  # SOURCE: 240, all cracked
    prefixes = Counter(r.image_path.name[0] for r in recs)
    assert prefixes == {"a": 197, "b": 5, "c": 25, "d": 2, "h": 11}


def test_config_pv_el_counts() -> None:
    recs = config_reader("pv_el_crackseg").records()
    assert Counter(r.split for r in recs) == {"train": 486, "val": 172, "test": 128}  # SOURCE: subset 486/172/128
    # SOURCE: images containing each class (val / test; train is a half subset there)
    for split, (dark, cross, crack) in {"val": (37, 50, 63), "test": (30, 28, 49)}.items():
        c = Counter(n for r in recs if r.split == split for n in r.extra["classes"])
        assert c == {"dark area": dark, "cross crack": cross, "crack": crack}
    normal = [r for r in recs if not r.is_anomalous]
    assert normal and all(r.extra["classes"] == () for r in normal)  # busbar-only cells are defect-free
    assert len(normal) == 786 - sum(bool(r.extra["classes"]) for r in recs)


def test_config_deeppcb_counts() -> None:
    recs = config_reader("deeppcb").records()
    tested = [r for r in recs if r.is_anomalous]
    assert len(tested) == 1500 and len(recs) - len(tested) == 1501  # SOURCE: 1500 tested, 1501 templates
    assert sum(len(r.boxes) for r in recs) == 10013  # SOURCE: 10,013 boxes
    per_class = Counter(r.class_names[k - 1] for r in tested for *_, k in r.boxes)
    assert per_class == {"open": 1942, "short": 1506, "mousebite": 1965, "spur": 1625, "spurious copper": 1474,
                         "pin-hole": 1501}
    assert Counter(r.split for r in tested) == {"train": 1000, "test": 500}  # trainval.txt / test.txt
    assert all(r.mask_quality == "box" for r in tested)
