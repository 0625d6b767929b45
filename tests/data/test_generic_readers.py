"""Generic configured readers on generated copies of each real layout: flat images + masks (CrackForest,
masonry), class-id masks with an id map and ignored ids (PV-Vision EL), boxes (DeepPCB text, Pascal VOC XML),
and the shipped configs/data snippets on those layouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common.data import NORMAL, BoxReader, ClassIdSegReader, DataError, DefectDataModule, FolderReader
from common.data.io import load_sample
from common.data.reader_config import build_reader
from common.data.readers.boxes import parse_text_boxes
from tests.conftest import REPO, write_image
from tests.data.layouts import (
    DEEPPCB_BOXES,
    PV_EL,
    config_node,
    pv_el_mask,
    write_all,
    write_crackforest,
    write_deeppcb,
    write_pv_el,
    write_voc,
)

PV_NAMES = {1: "dark area", 2: "cross crack", 3: "crack"}


def pv_reader(base: Path, **kw) -> ClassIdSegReader:
    return ClassIdSegReader(base / PV_EL, class_names=kw.pop("class_names", PV_NAMES), image_dir="{split}/img",
                            mask_dir="{split}/ann", split_names={"testset": "test"}, object_name="solar_cell", **kw)


def test_flat_images_with_masks_in_a_sibling_folder(tmp_path: Path, rng: np.random.Generator) -> None:
    root = write_crackforest(tmp_path, rng, labelled=5, unlabelled=2)
    keep = FolderReader(root / "image", mask_dir="../masks_png", default_defect_type="crack", mask_threshold=127)
    recs = keep.records()
    assert Counter(r.is_anomalous for r in recs) == {True: 5, None: 2}  # no mask: unlabelled, not normal
    skip = FolderReader(root / "image", mask_dir="../masks_png", default_defect_type="crack", mask_threshold=127,
                        skip_unmasked=True)
    recs = skip.records()
    assert len(recs) == 5 and {r.defect_type for r in recs} == {"crack"}
    assert [p.name for p in skip.left_out] == ["006.jpg", "007.jpg"]
    s = load_sample(recs[0])
    assert s.mask.sum() == 48 and s.image[s.mask > 0].mean() > 200 > s.image[s.mask == 0].mean()  # JPEG: ~250


def test_class_ids_with_an_id_map_and_ignored_busbars(tmp_path: Path, rng: np.random.Generator) -> None:
    write_pv_el(tmp_path, rng)
    r = pv_reader(tmp_path, ignore_ids=[4])
    recs = r.records()
    assert r.class_names == ("dark area", "cross crack", "crack")
    assert Counter(x.split for x in recs) == {"train": 4, "val": 4, "test": 4}  # testset -> test
    busbar_only = [x for x in recs if x.image_path.name.startswith("EL0_")]
    assert len(busbar_only) == 3 and all(x.is_anomalous is False and x.defect_type == NORMAL for x in busbar_only)
    two = next(x for x in recs if x.image_path.name == "EL2_val.jpg")
    assert two.extra["classes"] == ("dark area", "cross crack") and two.defect_type == "cross crack"  # larger area
    s = load_sample(two)
    raw = pv_el_mask(rng, 32, [1, 2])[..., 0]
    assert s.class_mask.max() == 2 and not s.class_mask[raw == 4].any()  # busbar pixels are background
    assert np.array_equal(s.class_mask, np.where(raw == 4, 0, raw)) and s.mask.sum() == (raw % 4 > 0).sum()
    normal = load_sample(busbar_only[0])
    assert normal.mask.sum() == 0 and not normal.is_anomalous
    # without ignore_ids the busbar id is unknown: a one-line error naming the file, the id and the classes
    with pytest.raises(DataError, match=r"EL0_\w+\.png holds class id 4 but only 3 classes are known \(1=dark area"):
        pv_reader(tmp_path).records()
    dm = DefectDataModule(r, image_size=32, num_workers=0)
    assert dm.vocabulary == [NORMAL, "dark area", "cross crack", "crack"]
    assert {k: len(v) for k, v in dm.split_records().items()} == {"train": 4, "val": 4, "test": 4}


def test_class_id_map_with_gaps(tmp_path: Path, rng: np.random.Generator) -> None:
    write_pv_el(tmp_path, rng)
    r = pv_reader(tmp_path, class_names={2: "cross crack", 3: "crack"}, ignore_ids=[1, 4])  # dark areas ignored
    recs = {x.image_path.name: x for x in r.records()}
    assert recs["EL2_train.jpg"].extra["classes"] == ("cross crack",)
    s = load_sample(recs["EL3_train.jpg"])
    assert set(np.unique(s.class_mask)) == {0, 1, 2}  # value 2 -> class 1, value 3 -> class 2
    with pytest.raises(DataError, match="both classes and ignored"):
        pv_reader(tmp_path, ignore_ids=[3])
    with pytest.raises(DataError, match=r"split 'nope' not found"):
        pv_reader(tmp_path, splits=["nope"]).records()


def test_text_boxes_either_separator_and_templates_as_normals(tmp_path: Path, rng: np.random.Generator) -> None:
    root = write_deeppcb(tmp_path, rng) / "PCBData"
    names = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "spurious copper", 6: "pin-hole"}
    r = BoxReader(root, images="*/*/*_test.png", image_suffix="_test", annotation="{dir}_not/{stem}.txt",
                  normal_images="*/*/*_temp.png", normal_suffix="_temp", class_names=names, object_name="pcb",
                  split_files={"train": "trainval.txt", "test": "test.txt"})
    recs = r.records()
    assert Counter(x.is_anomalous for x in recs) == {True: 4, False: 5}
    assert Counter((x.split, x.is_anomalous) for x in recs) == {("train", True): 3, ("train", False): 3,
                                                                 ("test", True): 1, ("test", False): 1, (None, False): 1}
    assert sum(len(x.boxes) for x in recs) == sum(len(b) for b, _ in DEEPPCB_BOXES.values())
    first = next(x for x in recs if x.image_path.name == "00041000_test.png")
    assert first.defect_type == "mousebite" and first.extra["classes"] == ("open", "mousebite")  # larger box wins
    assert first.mask_quality == "box" and first.mask_kind == "boxes" and first.mask_path.suffix == ".txt"
    for rec in recs:
        s = load_sample(rec)
        if rec.is_anomalous:  # the drawn defect pixels are exactly the boxes
            assert s.mask_quality == "box" and np.array_equal(s.mask.astype(bool), s.image[..., 0] == 255)
        else:
            assert s.mask is None and s.mask_quality == "pixel"
    nested = load_sample(next(x for x in recs if x.image_path.name == "00041002_test.png"))
    assert nested.class_mask[10, 10] == 5 and nested.class_mask[6, 6] == 2  # the small box inside stays visible
    assert r.class_names == tuple(names.values())


def test_text_box_parsing_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("# comment\n1,2,3,4,open\n\n5 6\t7 8 2\n")
    assert parse_text_boxes(path) == [(1, 2, 3, 4, "open"), (5, 6, 7, 8, "2")]
    path.write_text("1 2 3 open\n")
    with pytest.raises(DataError, match=r"a\.txt:1: expected 'x1 y1 x2 y2 type'"):
        parse_text_boxes(path)
    path.write_text("5 5 5 9 1\n")
    with pytest.raises(DataError, match=r"a\.txt:1: empty box"):
        parse_text_boxes(path)


def test_voc_boxes(tmp_path: Path, rng: np.random.Generator) -> None:
    root = write_voc(tmp_path / "voc", rng)
    r = BoxReader(root, images="JPEGImages/*.jpg", annotation="Annotations/{stem}.xml",
                  split_files={"train": "ImageSets/Main/train.txt", "test": "ImageSets/Main/test.txt"})
    recs = {x.image_path.stem: x for x in r.records()}
    assert r.class_names == ("Scratches", "dent", "scratch")  # as written; the corpus unifies them
    assert recs["img2"].is_anomalous is False and recs["img2"].defect_type == NORMAL  # no objects: defect-free
    assert {k: x.split for k, x in recs.items()} == {"img0": "train", "img1": "test", "img2": "train"}
    s = load_sample(recs["img0"])
    assert s.mask.sum() == 8 * 9 and s.mask[3:12, 2:10].all()  # 1-based inclusive xmin..xmax, ymin..ymax
    assert recs["img1"].defect_type == "scratch"
    (root / "Annotations" / "img1.xml").write_text("<annotation><object><name>dent</name></object></annotation>")
    with pytest.raises(DataError, match=r"img1\.xml: object 1: needs <name> and <bndbox>"):
        BoxReader(root, images="JPEGImages/*.jpg", annotation="Annotations/{stem}.xml").records()
    (root / "Annotations" / "img0.txt").write_text("1 1 5 5 1\n")
    with pytest.raises(DataError, match=r"box type 1 is a number; give class_names"):
        BoxReader(root, images="JPEGImages/img0.jpg", annotation="Annotations/{stem}.txt").records()
    with pytest.raises(DataError, match=r"unknown box type '1'; class_names knows \['dent'\]"):
        BoxReader(root, images="JPEGImages/img0.jpg", annotation="Annotations/{stem}.txt",
                  class_names={"dent": "dent"}).records()


def test_box_reader_missing_annotation_is_an_error(tmp_path: Path, rng: np.random.Generator) -> None:
    root = write_deeppcb(tmp_path, rng) / "PCBData"
    (root / "group00041" / "00041_not" / "00041001.txt").unlink()
    with pytest.raises(DataError, match=r"00041001_test\.png: no annotation; expected .*00041_not/00041001\.txt"):
        BoxReader(root, images="*/*/*_test.png", image_suffix="_test", annotation="{dir}_not/{stem}.txt",
                  class_names=["a", "b", "c", "d", "e", "f"]).records()


EXPECTED = {  # config -> (records, defective, defect types, splits)
    "crackforest": (5, 5, {"crack"}, {None}),
    "masonry_crack": (6, 6, {"crack"}, {None}),
    "pv_el_crackseg": (12, 9, {NORMAL, "cross crack", "crack"}, {"train", "val", "test"}),
    "deeppcb": (9, 4, {NORMAL, "pin-hole", "short", "mousebite", "spur"}, {"train", "test", None}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_reads_its_layout(name: str, tmp_path: Path, rng: np.random.Generator) -> None:
    write_all(tmp_path, rng)
    reader = build_reader(config_node(name, tmp_path), name)
    recs = reader.records()
    n, defective, types, splits = EXPECTED[name]
    assert len(recs) == n and sum(bool(r.is_anomalous) for r in recs) == defective
    assert {r.defect_type for r in recs} == types and {r.split for r in recs} == splits
    assert all(r.is_anomalous is not None for r in recs)  # nothing unlabelled reaches training
    sample = load_sample(next(r for r in recs if r.is_anomalous))
    assert sample.mask.any() and sample.mask.shape == sample.image.shape[:2]


def test_every_shipped_data_config_is_a_reader_config() -> None:
    names = sorted(p.stem for p in (REPO / "configs" / "data").glob("*.yaml"))
    assert names == ["crackforest", "deeppcb", "demo", "magnetic_tile", "masonry_crack", "neu_seg", "pv_el_crackseg"]


def test_class_id_reader_default_layout_unchanged(classid_root: Path, rng: np.random.Generator) -> None:
    write_image(classid_root / "ann_dir" / "train" / "000000.png", np.full((32, 32), 9, np.uint8))
    with pytest.raises(DataError, match=r"000000\.png holds class id 9 but only 3 classes are known"):
        ClassIdSegReader(classid_root).records()
