"""Shared fixtures: tiny datasets in every supported layout, written into tmp folders, and offline settings.

Imports between test files: pytest (``--import-mode=importlib``) registers every ``conftest.py`` and the test
packages it collects under their own names, so ``from tests.conftest import ...`` and ``from tests.<pkg>.<module>
import ...`` resolve to this suite even when another distribution's top-level ``tests`` package (torch-fidelity
installs one) owns the name ``tests``. A plain module directly under ``tests/`` would not: what configs or
several test packages import lives in :mod:`common.testing` (``tests/test_packaging.py`` checks both).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def fit_tiny_demo(tmp: Path) -> dict[str, Path]:
    """A tiny CLIP-MDC trained for one epoch through ``lightning fit`` with the demo config on generated data
    (``tmp/demo``), its last checkpoint in ``tmp/ckpt``: ``{"data", "ckpt", "tmp"}``."""
    from common.cli import main
    from common.data.demo import generate_demo_dataset

    data = generate_demo_dataset(tmp / "demo", image_size=48, n_train_good=3, n_test_good=2, n_test_defect=2)
    ckpt_dir = tmp / "ckpt"
    callbacks = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(ckpt_dir), "save_last": True}}])
    configs = REPO / "configs" / "clipmdc"
    assert main(["fit", "--config", str(configs / "demo.yaml"), "--config", str(configs / "model" / "tiny.yaml"),
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false", "--data.init_args.reader.init_args.root", str(data),
                 "--data.init_args.image_size", "64", "--data.init_args.num_workers", "0", "--trainer.max_epochs",
                 "1", "--trainer.callbacks", callbacks, "--trainer.default_root_dir", str(tmp / "runs")]) == 0
    return {"data": data, "ckpt": ckpt_dir / "last.ckpt", "tmp": tmp}


def shared_data(name: str) -> Path:
    """Path of a real dataset in ``../shared/data``; skips the test with a reason when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not present (a fresh clone has no ../shared); this test needs it")
    return path


def write_image(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def blob_pair(rng: np.random.Generator, size: int = 32, defect: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB image and a binary mask of a bright square drawn on it (the defect)."""
    img = rng.integers(40, 120, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if defect:
        y, x = rng.integers(2, size - 10, 2)
        mask[y : y + 8, x : x + 6] = 1
        img[mask > 0] = 250
    return img, mask


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def mvtec_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Two objects, 4 train/good, 2 test/good, 3 per defect type (scratch, hole) with masks."""
    root = tmp_path / "mvtec"
    for obj in ("bottle", "screw"):
        for i in range(4):
            write_image(root / obj / "train" / "good" / f"{i:03d}.png", blob_pair(rng, defect=False)[0])
        for i in range(2):
            write_image(root / obj / "test" / "good" / f"{i:03d}.png", blob_pair(rng, defect=False)[0])
        for d in ("scratch", "hole"):
            for i in range(3):
                img, m = blob_pair(rng)
                write_image(root / obj / "test" / d / f"{i:03d}.png", img)
                write_image(root / obj / "ground_truth" / d / f"{i:03d}_mask.png", m * 255)
    return root


@pytest.fixture
def visa_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "visa"
    rows = []
    for obj in ("candle", "pcb1"):
        for i in range(4):
            anomalous = i >= 2
            img, m = blob_pair(rng, defect=anomalous)
            kind = "Anomaly" if anomalous else "Normal"
            rel = f"{obj}/Data/Images/{kind}/{i:04d}.JPG"
            write_image(root / rel, img)
            mask_rel = ""
            if anomalous:
                mask_rel = f"{obj}/Data/Masks/Anomaly/{i:04d}.png"
                write_image(root / mask_rel, m * 3)  # VisA masks hold small non-zero ids
            rows.append([obj, "train" if i % 2 == 0 else "test", "anomaly" if anomalous else "normal", rel, mask_rel])
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


@pytest.fixture
def ksdd2_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "ksdd2"
    for split in ("train", "test"):
        for i in range(4):
            img, m = blob_pair(rng, defect=i % 2 == 1)
            write_image(root / split / f"{10000 + i}.png", img)
            write_image(root / split / f"{10000 + i}_GT.png", m * 255)
    return root


@pytest.fixture
def magnetic_tile_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "magnetic_tile"
    for cls, n in (("Blowhole", 2), ("Crack", 3), ("Free", 4)):
        for i in range(n):
            img, m = blob_pair(rng, defect=cls != "Free")
            gray = img[..., 0]
            write_image(root / f"MT_{cls}" / "Imgs" / f"exp1_num_{i}.jpg", gray)
            # JPEG-like noise in the mask: values 0..20 are background, 235..255 defect
            noisy = np.where(m > 0, 240, 10).astype(np.uint8)
            write_image(root / f"MT_{cls}" / "Imgs" / f"exp1_num_{i}.png", noisy)
    return root


@pytest.fixture
def classid_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "neu_like"
    (root).mkdir()
    (root / "labels.txt").write_text("__ignore__\n_background_\nInclusion\nPatches\nScratches\n")
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for i in range(n):
            img, m = blob_pair(rng)
            ids = m.astype(np.uint8) * (1 + i % 3)
            write_image(root / "img_dir" / split / f"{i:06d}.jpg", img)
            write_image(root / "ann_dir" / split / f"{i:06d}.png", ids)
    return root


@pytest.fixture
def manifest_path(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "pairs"
    lines = []
    for i in range(4):
        img, m = blob_pair(rng, defect=i > 0)
        write_image(root / "imgs" / f"{i}.png", img)
        entry = {"image": f"imgs/{i}.png", "caption": f"caption number {i}", "object": "plate"}
        if i > 0:
            write_image(root / "masks" / f"{i}.png", m * 255)
            entry |= {"mask": f"masks/{i}.png", "defect_type": "scratch" if i % 2 else "dent"}
        else:
            entry["label"] = "good"
        lines.append(json.dumps(entry))
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
