"""Every reader on a small generated fixture of its layout."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from common.data import (
    NORMAL,
    ClassIdSegReader,
    FolderReader,
    KSDD2Reader,
    MagneticTileReader,
    ManifestReader,
    MVTecReader,
    VisAReader,
)
from tests.conftest import blob_pair, write_image


def test_mvtec_reader(mvtec_root: Path) -> None:
    r = MVTecReader(mvtec_root)
    recs = r.records()
    assert len(recs) == 2 * (4 + 2 + 6)
    assert Counter(x.defect_type for x in recs) == {NORMAL: 12, "scratch": 6, "hole": 6}
    assert {x.object_name for x in recs} == {"bottle", "screw"}
    samples = list(r)
    for s, rec in zip(samples, recs, strict=True):
        assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        assert s.is_anomalous == (rec.defect_type != NORMAL)
        if s.is_anomalous:
            assert s.mask is not None and s.mask.sum() == 48 and set(np.unique(s.mask)) == {0, 1}
            # the mask marks the bright defect pixels exactly
            assert np.array_equal(s.mask.astype(bool), (s.image == 250).all(-1))
        else:
            assert s.mask is None
    assert {x.split for x in recs} == {"train", "test"}
    one = MVTecReader(mvtec_root / "screw").records()
    assert len(one) == 12 and {x.object_name for x in one} == {"screw"}
    assert len(MVTecReader(mvtec_root, objects=["bottle"]).records()) == 12


def test_visa_reader(visa_root: Path) -> None:
    recs = VisAReader(visa_root).records()
    assert len(recs) == 8
    assert Counter(x.is_anomalous for x in recs) == {True: 4, False: 4}
    s = [s for s in VisAReader(visa_root) if s.is_anomalous][0]
    assert s.mask.sum() == 48  # mask values 3 count as defect (threshold 0)
    assert Counter(x.split for x in recs) == {"train": 4, "test": 4}


def test_ksdd2_reader(ksdd2_root: Path) -> None:
    recs = KSDD2Reader(ksdd2_root).records()
    assert len(recs) == 8  # _GT files are masks, not images
    assert Counter(x.defect_type for x in recs) == {NORMAL: 4, "defect": 4}
    assert all(x.mask_path.name.endswith("_GT.png") for x in recs)


def test_magnetic_tile_reader(magnetic_tile_root: Path) -> None:
    r = MagneticTileReader(magnetic_tile_root)
    recs = r.records()
    assert Counter(x.defect_type for x in recs) == {NORMAL: 4, "blowhole": 2, "crack": 3}
    for s in r:
        assert s.image.shape[-1] == 3  # grayscale JPEGs come back as RGB
        assert s.mask.sum() == (48 if s.is_anomalous else 0)  # noisy masks thresholded at 127


def test_class_id_reader(classid_root: Path) -> None:
    r = ClassIdSegReader(classid_root)
    assert r.class_names == ("inclusion", "patches", "scratches")
    recs = r.records()
    assert Counter(x.split for x in recs) == {"train": 6, "val": 3, "test": 3}
    s = next(iter(r))
    assert s.class_mask is not None and s.class_mask.max() == 1 and s.defect_type == "inclusion"
    assert r.records()[1].defect_type == "patches"


def test_folder_reader_class_folders(tmp_path: Path, rng: np.random.Generator) -> None:
    for cls, n in (("ok", 3), ("crack", 2)):
        for i in range(n):
            write_image(tmp_path / cls / f"{i}.png", blob_pair(rng, defect=cls != "ok")[0])
    recs = FolderReader(tmp_path).records()
    assert Counter(x.defect_type for x in recs) == {NORMAL: 3, "crack": 2}
    assert all(x.is_anomalous == (x.defect_type == "crack") for x in recs)


def test_folder_reader_csv_and_flat_masks(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(4):
        img, m = blob_pair(rng, defect=i >= 2)
        write_image(tmp_path / "images" / f"{i}.png", img)
        write_image(tmp_path / "masks" / f"{i}_mask.png", m)  # 0/1 masks
    flat = FolderReader(tmp_path / "images", mask_dir=str(tmp_path / "masks"), mask_suffix="_mask").records()
    assert [x.is_anomalous for x in flat] == [False, False, True, True]
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "defect_type"])
        w.writerows([["images/0.png", "ok", ""], ["images/2.png", "ng", "dent"], ["images/3.png", "1", ""]])
    recs = FolderReader(tmp_path, labels_csv="labels.csv", mask_dir="masks", mask_suffix="_mask").records()
    assert [(x.is_anomalous, x.defect_type) for x in recs] == [(False, NORMAL), (True, "dent"), (True, "defect")]
    assert recs[1].mask_path is not None


def test_folder_reader_unlabelled(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.png", blob_pair(rng)[0])
    recs = FolderReader(tmp_path).records()
    assert len(recs) == 3 and all(x.is_anomalous is None for x in recs)


def test_manifest_reader(manifest_path: Path) -> None:
    r = ManifestReader(manifest_path)
    recs = r.records()
    assert [x.defect_type for x in recs] == [NORMAL, "scratch", "dent", "scratch"]
    assert recs[0].caption == "caption number 0" and recs[0].object_name == "plate"
    samples = list(r)
    assert samples[1].mask.sum() == 48 and samples[1].caption == "caption number 1"
