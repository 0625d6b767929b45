"""Bad input gets one clear error naming the file and the problem; nothing is silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data import (
    DataError,
    DefectDataModule,
    DefectDataset,
    MagneticTileReader,
    ManifestReader,
    MVTecReader,
    VisAReader,
)
from common.data.io import load_sample
from tests.conftest import blob_pair, write_image


def test_truncated_image_names_the_file(mvtec_root: Path) -> None:
    victim = mvtec_root / "bottle" / "test" / "scratch" / "001.png"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    rec = next(r for r in MVTecReader(mvtec_root).records() if r.image_path == victim)
    with pytest.raises(DataError, match=r"001\.png.*(truncated|cannot read)"):
        load_sample(rec)


def test_not_an_image_names_the_file(mvtec_root: Path) -> None:
    victim = mvtec_root / "screw" / "train" / "good" / "000.png"
    victim.write_text("this is not a png")
    records = MVTecReader(mvtec_root).records()
    ds = DefectDataset(records, ["good", "hole", "scratch"], ["bottle", "screw"])
    index = next(i for i, r in enumerate(records) if r.image_path == victim)
    with pytest.raises(DataError, match=str(victim)):
        ds[index]


def test_mask_size_mismatch_names_both_files_and_sizes(mvtec_root: Path, rng: np.random.Generator) -> None:
    mask = mvtec_root / "bottle" / "ground_truth" / "hole" / "002_mask.png"
    write_image(mask, np.zeros((20, 24), np.uint8))
    rec = next(r for r in MVTecReader(mvtec_root).records() if r.mask_path == mask)
    with pytest.raises(DataError) as e:
        load_sample(rec)
    msg = str(e.value)
    assert str(mask) in msg and str(rec.image_path) in msg and "24x20" in msg and "32x32" in msg


def test_missing_root_says_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*MVTec AD layout"):
        MVTecReader(tmp_path / "nope").records()


def test_unknown_layout_says_what_was_found(tmp_path: Path, rng: np.random.Generator) -> None:
    write_image(tmp_path / "holiday.png", blob_pair(rng)[0])
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match=r"expected .*train/good.*found \[holiday\.png, notes/\]"):
        MVTecReader(tmp_path).records()
    with pytest.raises(DataError, match=r"Magnetic Tile layout.*found \[holiday\.png, notes/\]"):
        MagneticTileReader(tmp_path).records()
    with pytest.raises(DataError, match=r"VisA layout.*split_csv/1cls\.csv"):
        VisAReader(tmp_path).records()


def test_empty_class_is_an_error(mvtec_root: Path) -> None:
    (mvtec_root / "screw" / "test" / "crack").mkdir()
    with pytest.raises(DataError, match=r"test/crack.*class 'crack' of screw has no images"):
        MVTecReader(mvtec_root).records()


def test_defective_image_without_mask_is_an_error(mvtec_root: Path) -> None:
    (mvtec_root / "bottle" / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"000\.png: defective test image has no mask"):
        MVTecReader(mvtec_root).records()


def test_manifest_bad_json_names_file_and_line(manifest_path: Path) -> None:
    lines = manifest_path.read_text().splitlines()
    lines.insert(2, '{"image": "imgs/1.png", "caption": oops}')
    manifest_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{manifest_path}:3: not valid JSON"):
        ManifestReader(manifest_path).records()


def test_manifest_missing_image_file(manifest_path: Path) -> None:
    with manifest_path.open("a") as f:
        f.write(json.dumps({"image": "imgs/missing.png"}) + "\n")
    with pytest.raises(DataError, match=r"manifest\.jsonl:5: image .*missing\.png does not exist"):
        ManifestReader(manifest_path).records()


def test_few_shot_asks_for_more_than_a_class_has(mvtec_root: Path) -> None:
    dm = DefectDataModule(MVTecReader(mvtec_root), split="random", few_shot=50, num_workers=0)
    with pytest.raises(DataError, match=r"class '(good|hole|scratch)' has only \d+ training samples, 50 requested"):
        dm.split_records()


def test_cli_reports_data_errors_in_one_line(tmp_path: Path) -> None:
    from common.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model:\n  class_path: common.testing.TinySegModule\n"
        "data:\n  class_path: common.data.DefectDataModule\n  init_args:\n    num_workers: 0\n"
        "    reader:\n      class_path: common.data.MVTecReader\n"
        f"      init_args:\n        root: {tmp_path / 'absent'}\n"
        "trainer:\n  fast_dev_run: true\n  logger: false\n  accelerator: cpu\n"
    )
    assert main(["fit", "--config", str(cfg)]) == 2
