"""Small generated copies of the on-disk layouts of the real data sets in ../shared/data.

Each writer puts its data set under ``base/<name>/`` with the same relative paths as the real one, so the
shipped ``configs/data/<name>.yaml`` snippets read them once ``../shared/data`` is replaced by ``base``
(:func:`config_node`). Every image has a bright defect region exactly where its mask (or box) says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.data.reader_config import reader_node
from tests.conftest import REPO, blob_pair, write_image

REAL_PREFIX = "../shared/data"
PV_EL = "pv_el_crackseg/examples/crack_segmentation/img_label_for_training"


def config_node(name: str, base: Path) -> dict:
    """The reader config of ``configs/data/<name>.yaml`` with its root moved from ../shared/data to ``base``."""
    node = reader_node(REPO / "configs" / "data" / f"{name}.yaml")
    root = node["init_args"]["root"]
    assert root.startswith(REAL_PREFIX), root
    node["init_args"]["root"] = str(base) + root[len(REAL_PREFIX):]
    return node


def write_crackforest(base: Path, rng: np.random.Generator, labelled: int = 5, unlabelled: int = 2) -> Path:
    """``crackforest/image/NNN.jpg`` + ``masks_png/NNN.png`` (0/255) for the first ``labelled`` images."""
    root = base / "crackforest"
    for i in range(labelled + unlabelled):
        img, m = blob_pair(rng)
        write_image(root / "image" / f"{i + 1:03d}.jpg", img)
        if i < labelled:
            write_image(root / "masks_png" / f"{i + 1:03d}.png", m * 255)
    (root / "groundTruth").mkdir()  # present in the real layout, never read
    return root


def write_masonry(base: Path, rng: np.random.Generator, n: int = 6) -> Path:
    """``masonry_crack/dataset/crack_detection_224_{images,masks}/<name>.png``, every patch cracked."""
    root = base / "masonry_crack" / "dataset"
    for i in range(n):
        img, m = blob_pair(rng)
        write_image(root / "crack_detection_224_images" / f"a_0_{i}.png", img)
        write_image(root / "crack_detection_224_masks" / f"a_0_{i}.png", m * 255)
    return base / "masonry_crack"


def pv_el_mask(rng: np.random.Generator, size: int, classes: list[int]) -> np.ndarray:
    """An RGB (R=G=B) class-id mask: busbar rows (id 4) plus one block per class in ``classes``."""
    m = np.zeros((size, size), np.uint8)
    m[::8] = 4  # busbars: structure, in every cell
    for k, c in enumerate(classes):
        m[4 + 8 * k : 8 + 8 * k, 2 : 2 + 4 * (k + 1) + 3 * c] = c
    return np.repeat(m[..., None], 3, axis=2)


def write_pv_el(base: Path, rng: np.random.Generator) -> Path:
    """``{train,val,testset}/{img,ann}``: per split a busbar-only cell, a crack, a dark area + cross crack."""
    root = base / PV_EL
    for split in ("train", "val", "testset"):
        for j, classes in enumerate(([], [3], [1, 2], [3, 2])):
            img = rng.integers(40, 120, (32, 32, 3), dtype=np.uint8)
            write_image(root / split / "img" / f"EL{j}_{split}.jpg", img)
            write_image(root / split / "ann" / f"EL{j}_{split}.png", pv_el_mask(rng, 32, classes))
    return base / "pv_el_crackseg"


DEEPPCB_BOXES = {  # image id -> (boxes, separator): both separators occur
    "00041000": ([(2, 3, 10, 9, 1), (12, 14, 20, 30, 3)], " "),
    "00041001": ([(0, 0, 6, 6, 6)], ","),
    "00041002": ([(5, 5, 25, 25, 2), (8, 8, 12, 12, 5)], " "),
    "00041003": ([(1, 20, 9, 28, 4)], ", "),
}


def write_deeppcb(base: Path, rng: np.random.Generator) -> Path:
    """``PCBData/group00041/00041/<n>_{test,temp}.png``, ``00041_not/<n>.txt``, trainval.txt and test.txt.

    Ids 000-002 are listed in trainval, 003 in test; one extra template (004) is in no list.
    """
    root = base / "deeppcb" / "PCBData"
    folder = root / "group00041" / "00041"
    for n, (boxes, sep) in DEEPPCB_BOXES.items():
        img = np.zeros((32, 32), np.uint8)
        for x1, y1, x2, y2, _ in boxes:
            img[y1:y2, x1:x2] = 255
        write_image(folder / f"{n}_test.png", img)
        write_image(folder / f"{n}_temp.png", np.zeros((32, 32), np.uint8))
        ann = root / "group00041" / "00041_not" / f"{n}.txt"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text("".join(sep.join(str(v) for v in b) + "\n" for b in boxes))
    write_image(folder / "00041004_temp.png", np.zeros((32, 32), np.uint8))
    line = "group00041/00041/{n}.jpg group00041/00041_not/{n}.txt\n"
    (root / "trainval.txt").write_text("".join(line.format(n=n) for n in list(DEEPPCB_BOXES)[:3]))
    (root / "test.txt").write_text(line.format(n="00041003"))
    return base / "deeppcb"


def write_voc(root: Path, rng: np.random.Generator) -> Path:
    """A Pascal VOC folder: JPEGImages, Annotations (one image without objects), ImageSets/Main splits."""
    objects = {"img0": [("Scratches", 3, 4, 10, 12)], "img1": [("dent", 1, 1, 8, 8), ("scratch", 20, 20, 30, 31)],
               "img2": []}
    for stem, objs in objects.items():
        write_image(root / "JPEGImages" / f"{stem}.jpg", blob_pair(rng, defect=False)[0])
        xml = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                      f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objs)
        path = root / "Annotations" / f"{stem}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<annotation><filename>{stem}.jpg</filename><size><width>32</width><height>32</height>"
                        f"<depth>3</depth></size>{xml}</annotation>")
    sets = root / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("img0\nimg2\n")
    (sets / "test.txt").write_text("img1\n")
    return root


def write_all(base: Path, rng: np.random.Generator) -> dict[str, Path]:
    """Every layout above under ``base`` (for config and corpus tests)."""
    return {"crackforest": write_crackforest(base, rng), "masonry_crack": write_masonry(base, rng),
            "pv_el_crackseg": write_pv_el(base, rng), "deeppcb": write_deeppcb(base, rng)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
