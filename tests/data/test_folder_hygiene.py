"""A user's own folder read as a user means it: system files ignored, masks beside images paired (never read as
images), folders of image + mask pairs read as groups, 16-bit images scaled by bit depth, and a printed summary
of what was found."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import DataError, DefectDataModule, FolderReader
from common.data.io import list_images, read_image
from common.data.types import NORMAL
from tests.conftest import blob_pair, write_image


def _kolektor(root: Path, rng: np.random.Generator, parts: int = 6, per_part: int = 4) -> Path:
    """KolektorSDD layout: ``kosNN/PartK.jpg`` + ``kosNN/PartK_label.bmp``; one defect in every other part."""
    for k in range(1, parts + 1):
        for i in range(per_part):
            img, mask = blob_pair(rng, size=24, defect=(i == 1 and k % 2 == 0))
            write_image(root / f"kos{k:02d}" / f"Part{i}.jpg", img)
            write_image(root / f"kos{k:02d}" / f"Part{i}_label.bmp", mask * 255)
    return root


def _junk(root: Path) -> None:
    """What file managers, notebooks and archives leave behind."""
    write_image(root / ".ipynb_checkpoints" / "Part0-checkpoint.png", np.zeros((8, 8), np.uint8))
    (root / "__MACOSX" / "kos01").mkdir(parents=True)
    (root / "__MACOSX" / "kos01" / "._Part0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "kos01" / "._Part0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "Thumbs.db").write_bytes(b"thumbnail cache")
    (root / "kos01" / "desktop.ini").write_text("[.ShellClassInfo]")


def test_kolektor_layout_gives_one_record_per_image_with_its_mask(tmp_path: Path, rng: np.random.Generator) -> None:
    root = _kolektor(tmp_path / "ksdd", rng)
    _junk(root)
    reader = FolderReader(root)
    recs = reader.records()
    assert len(recs) == 6 * 4  # not 48 (masks read as images) and no junk
    assert reader.subfolder_mode == "groups"  # the part folders are not defect types
    assert all(r.image_path.suffix == ".jpg" and r.mask_path is not None for r in recs)
    assert all(r.mask_path == r.image_path.with_name(r.image_path.stem + "_label.bmp") for r in recs)
    assert Counter((r.defect_type, r.is_anomalous) for r in recs) == {(NORMAL, False): 21, ("defect", True): 3}
    assert {r.extra["group"] for r in recs} == {f"kos{k:02d}" for k in range(1, 7)}
    dm = DefectDataModule(reader, num_workers=0, image_size=16)
    assert dm.vocabulary == [NORMAL, "defect"]
    batch = next(iter(dm.test_dataloader()))
    assert batch.has_mask.all()


def test_groups_and_classes_can_be_forced(tmp_path: Path, rng: np.random.Generator) -> None:
    root = _kolektor(tmp_path / "ksdd", rng, parts=2, per_part=2)
    as_classes = FolderReader(root, subfolders="classes").records()
    assert {r.defect_type for r in as_classes} == {"kos01", "kos02"} and len(as_classes) == 4
    with pytest.raises(ValueError, match="subfolders must be one of"):
        FolderReader(root, subfolders="parts")


def test_class_folders_with_masks_beside_images(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(3):
        write_image(tmp_path / "good" / f"{i}.png", blob_pair(rng, defect=False)[0])
        img, mask = blob_pair(rng)
        write_image(tmp_path / "scratch" / f"s{i}.png", img)
        write_image(tmp_path / "scratch" / f"s{i}_mask.png", mask * 255)
    reader = FolderReader(tmp_path)
    recs = reader.records()
    assert reader.subfolder_mode == "classes" and len(recs) == 6
    assert Counter(r.defect_type for r in recs) == {NORMAL: 3, "scratch": 3}
    assert all((r.mask_path is not None) == (r.defect_type == "scratch") for r in recs)


def test_defect_only_class_folders_with_masks_stay_classes(tmp_path: Path, rng: np.random.Generator) -> None:
    """Every mask non-empty and no normal folder: one folder per defect type, not groups."""
    for cls in ("scratch", "hole"):
        for i in range(2):
            img, mask = blob_pair(rng)
            write_image(tmp_path / cls / f"{i}.png", img)
            write_image(tmp_path / cls / f"{i}_GT.png", mask)
    reader = FolderReader(tmp_path)
    assert Counter(r.defect_type for r in reader.records()) == {"scratch": 2, "hole": 2}
    assert reader.subfolder_mode == "classes"


def test_explicit_mask_suffix_and_orphan_mask(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(3):
        img, mask = blob_pair(rng, defect=i > 0)
        write_image(tmp_path / f"{i}.png", img)
        write_image(tmp_path / f"{i}_seg.png", mask)
    recs = FolderReader(tmp_path, mask_suffix="_seg").records()
    assert [r.is_anomalous for r in recs] == [False, True, True] and len(recs) == 3
    write_image(tmp_path / "7_seg.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r"mask .*7_seg\.png has no image beside it"):
        FolderReader(tmp_path, mask_suffix="_seg").records()
    # without a suffix, a lone "_seg" file is an ordinary (unlabelled) image
    assert len(FolderReader(tmp_path).records()) == 4


def test_hidden_and_system_folders_are_never_classes(tmp_path: Path, rng: np.random.Generator) -> None:
    for cls in ("ok", "crack"):
        for i in range(2):
            write_image(tmp_path / cls / f"{i}.png", blob_pair(rng, defect=cls == "crack")[0])
    write_image(tmp_path / ".ipynb_checkpoints" / "0-checkpoint.png", blob_pair(rng)[0])
    write_image(tmp_path / "__MACOSX" / "crack" / "0.png", blob_pair(rng)[0])
    (tmp_path / "ok" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    recs = FolderReader(tmp_path).records()
    assert Counter(r.defect_type for r in recs) == {NORMAL: 2, "crack": 2}
    assert [p.name for p in list_images(tmp_path / "ok")] == ["0.png", "1.png"]
    assert len(list_images(tmp_path, recursive=True)) == 4


def test_images_only_deeper_is_a_clear_error(tmp_path: Path, rng: np.random.Generator) -> None:
    for cls in ("good", "scratch"):
        write_image(tmp_path / "line1" / cls / "0.png", blob_pair(rng)[0])
    with pytest.raises(DataError, match=r"no recognised classes.*only deeper, e\.g\. line1/good/0\.png.*point root"):
        FolderReader(tmp_path).records()


def test_images_at_root_and_in_sub_folders_is_a_clear_error(tmp_path: Path, rng: np.random.Generator) -> None:
    write_image(tmp_path / "a.png", blob_pair(rng)[0])
    write_image(tmp_path / "old" / "b.png", blob_pair(rng)[0])
    with pytest.raises(DataError, match=r"both directly \(1\) and in sub-folders \(old/\)"):
        FolderReader(tmp_path).records()
    # a masks folder given as mask_dir is not an image folder
    write_image(tmp_path / "masks" / "a.png", np.zeros((32, 32), np.uint8))
    (tmp_path / "old" / "b.png").unlink()
    assert len(FolderReader(tmp_path, mask_dir="masks").records()) == 1


def test_sixteen_bit_images_are_scaled_by_bit_depth_not_per_image(tmp_path: Path) -> None:
    dark = np.full((8, 8), 1000, np.uint16)
    dark[0, 0] = 2000  # a min-max stretch would turn this dark image into black and white
    bright = np.full((8, 8), 65535, np.uint16)
    for name, arr in (("dark.png", dark), ("bright.tif", bright)):
        Image.fromarray(arr).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode.startswith("I")
    d, b = read_image(tmp_path / "dark.png"), read_image(tmp_path / "bright.tif")
    assert d.shape == (8, 8, 3) and d.dtype == np.uint8
    assert d[1, 1, 0] == round(1000 * 255 / 65535) == 4 and d[0, 0, 0] == round(2000 * 255 / 65535) == 8
    assert (b == 255).all()


def test_datamodule_prints_what_it_found(tmp_path: Path, rng: np.random.Generator, capsys) -> None:
    root = _kolektor(tmp_path / "ksdd", rng)
    dm = DefectDataModule(FolderReader(root), num_workers=0, image_size=16)
    dm.setup("fit")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "FolderReader" in lines[0] and "sub-folders are groups, labels from the masks" in lines[0]
    assert lines[1].split() == ["split", "images", "normal", "defective", "masks", "classes"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:5]}
    assert sum(int(r[1]) for r in rows.values()) == 24 and sum(int(r[3]) for r in rows.values()) == 3
    assert all(r[1] == r[4] for r in rows.values())  # every image has its mask
    assert "vocabulary (2): good, defect" in out
    dm.setup("validate")
    assert capsys.readouterr().out == ""  # printed once
    dm.setup("predict")
    assert "predict" in capsys.readouterr().out


def test_summary_shows_unlabelled_images_and_truncates_many_classes(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(4):
        write_image(tmp_path / "flat" / f"{i}.png", blob_pair(rng)[0])
    text = DefectDataModule(FolderReader(tmp_path / "flat"), num_workers=0).summary(predict=False)
    assert "unlabelled" in text.splitlines()[1]
    for k in range(8):
        for i in range(3):
            write_image(tmp_path / "many" / f"type{k}" / f"{i}.png", blob_pair(rng)[0])
    text = DefectDataModule(FolderReader(tmp_path / "many"), num_workers=0, split="random").summary()
    assert "(+3 more)" in text and "vocabulary (9)" in text
