"""Prediction never stops half-way and never hides a failure: an unreadable file is listed with its reason in
errors.csv and the final line, every other image is still predicted and summarised, and the command exits
non-zero. Training still stops at the first bad file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cli import main
from common.data import DataError, DefectDataModule, FolderReader
from common.data.dataset import DefectDataset, collate_samples
from common.data.demo import generate_demo_dataset
from common.prediction import EXIT_SOME_FAILED, ImagePrediction, predict_readable
from tests.conftest import blob_pair, write_image


def _folder(root: Path, n: int, bad: int, rng: np.random.Generator) -> Path:
    """``n`` JPEGs; image ``bad`` is truncated half-way (as a copy interrupted by a full disk)."""
    for i in range(n):
        write_image(root / f"{i:03d}.jpg", blob_pair(rng, size=40)[0])
    victim = root / f"{bad:03d}.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    return victim


def test_predict_dataset_marks_a_bad_file_and_training_datasets_stop(tmp_path: Path, rng: np.random.Generator) -> None:
    victim = _folder(tmp_path / "imgs", 3, bad=1, rng=rng)
    recs = FolderReader(tmp_path / "imgs").records()
    from common.data.transforms import build_transform

    ds = DefectDataset(recs, ["good"], ["object"], build_transform(24), on_error="mark")
    batch = collate_samples([ds[i] for i in range(3)])
    assert batch.failed == [1] and batch.image.shape == (3, 3, 24, 24)
    assert batch.error[1].startswith(str(victim)) and "truncated" in batch.error[1]
    assert batch.error[0] is None and batch.label.tolist() == [0, -1, 0]
    sub = batch.select([0, 2])
    assert sub.path == [batch.path[0], batch.path[2]] and torch.equal(sub.image, batch.image[[0, 2]])
    assert sub.error == [None, None] and not sub.failed
    with pytest.raises(DataError, match=r"001\.jpg.*truncated"):  # fit / validate / test: stop, naming the file
        DefectDataset(recs, ["good"], ["object"], build_transform(24))[1]
    dm = DefectDataModule(FolderReader(tmp_path / "imgs"), predict_reader=FolderReader(tmp_path / "imgs"),
                          num_workers=0, image_size=24, split="random", split_ratios=(0.34, 0.33, 0.33))
    assert dm.dataset("predict").on_error == "mark" and dm.dataset("train").on_error == "raise"


def test_predict_readable_keeps_order_and_skips_failures() -> None:
    from tests.clipmdc.helpers import make_batch

    batch = make_batch(4, 16)
    batch.error = [None, "x.png: cannot read image", None, "y.png: file not found"]
    seen = []

    def predict(b):
        seen.append(list(b.path))
        return [ImagePrediction(p, np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), "ok") for p in b.path]

    out = predict_readable(batch, predict)
    assert seen == [["img_0.png", "img_2.png"]]  # the model never sees the failed images
    assert [p.path for p in out] == batch.path and [p.error for p in out] == batch.error
    batch.error = ["a", "b", "c", "d"]
    assert [p.error for p in predict_readable(batch, predict)] == ["a", "b", "c", "d"] and len(seen) == 1


def test_lightning_predict_goes_on_after_a_truncated_jpeg(tmp_path: Path, rng: np.random.Generator, capsys) -> None:
    """The issue's report: one truncated JPEG among 25 stopped CLIP-MDC's predict after 16 images, with no
    summary.csv and no contact sheet."""
    train = generate_demo_dataset(tmp_path / "demo", image_size=48, n_train_good=2, n_test_good=1, n_test_defect=1)
    victim = _folder(tmp_path / "new", 25, bad=16, rng=rng)
    out = tmp_path / "pred"
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "model:\n  class_path: clipmdc.module.CLIPMDCModule\n  init_args:\n"
        "    model:\n      class_path: clipmdc.presets.tiny\n"
        "data:\n  class_path: common.data.DefectDataModule\n  init_args:\n"
        "    image_size: 32\n    batch_size: 4\n    num_workers: 0\n    split: random\n"
        f"    reader:\n      class_path: common.data.MVTecReader\n      init_args: {{root: {train}}}\n"
        f"    predict_reader:\n      class_path: common.data.FolderReader\n      init_args: {{root: {victim.parent}}}\n"
        f"trainer:\n  accelerator: cpu\n  logger: false\n  enable_progress_bar: false\n  default_root_dir: {tmp_path}\n"
        f"  callbacks:\n    - class_path: common.prediction.PredictionWriter\n      init_args: {{output_dir: {out}}}\n"
    )
    assert main(["predict", "--config", str(cfg)]) == EXIT_SOME_FAILED
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and str(victim) not in {x["path"] for x in lines}
    with (out / "errors.csv").open(newline="") as f:
        errors = list(csv.DictReader(f))
    assert len(errors) == 1 and errors[0]["path"] == str(victim) and "truncated" in errors[0]["reason"]
    with (out / "summary.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 24
    assert (out / "contact_sheet.png").is_file() and len(list((out / "overlays").glob("*.png"))) == 24
    captured = capsys.readouterr()
    assert "24 images predicted, 1 failed (see errors.csv)" in captured.out
    assert f"predict: skipped, listed in errors.csv: {victim}" in captured.err
    # all readable: exit code 0 and an errors.csv with its header only
    victim.unlink()
    assert main(["predict", "--config", str(cfg)]) == 0
    assert (out / "errors.csv").read_text().strip() == "path,reason"
    assert "24 images predicted, 0 failed ->" in capsys.readouterr().out


def test_training_still_stops_at_the_first_bad_file(tmp_path: Path, rng: np.random.Generator, capsys) -> None:
    root = tmp_path / "data"
    for cls in ("good", "scratch"):
        for i in range(4):
            write_image(root / cls / f"{i}.jpg", blob_pair(rng, size=40, defect=cls != "good")[0])
    dm = DefectDataModule(FolderReader(root), split="random", num_workers=0)
    victim = dm.split_records()["train"][0].image_path  # a training image
    victim.write_bytes(victim.read_bytes()[:100])
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "model:\n  class_path: common.testing.TinySegModule\n"
        "data:\n  class_path: common.data.DefectDataModule\n  init_args:\n"
        "    image_size: 16\n    batch_size: 8\n    num_workers: 0\n    split: random\n"
        f"    reader:\n      class_path: common.data.FolderReader\n      init_args: {{root: {root}}}\n"
        "trainer:\n  accelerator: cpu\n  logger: false\n  enable_progress_bar: false\n  max_epochs: 1\n"
        f"  enable_checkpointing: false\n  default_root_dir: {tmp_path}\n"
    )
    assert main(["fit", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {victim}: cannot read image")


def test_onnx_predict_follows_the_same_rules(tmp_path: Path, rng: np.random.Generator, capsys) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")
    from clipmdc.export import export_onnx
    from clipmdc.presets import tiny

    torch.manual_seed(0)
    path = export_onnx(tiny(defect_types=["good", "scratch"], object_names=["plate"]).eval(), tmp_path / "m.onnx", 160)
    victim = _folder(tmp_path / "imgs", 5, bad=2, rng=rng)
    (tmp_path / "imgs" / "._000.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: not an image at all
    out = tmp_path / "out"
    args = ["onnx-predict", "--onnx", str(path), "--input", str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "2"]
    assert main(args) == EXIT_SOME_FAILED
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    with (out / "errors.csv").open(newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [str(victim)]
    assert "4 images predicted, 1 failed (see errors.csv)" in capsys.readouterr().out
    victim.unlink()
    assert main(args) == 0
