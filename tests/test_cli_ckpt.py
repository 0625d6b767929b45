"""Checkpoints through the CLI (issue 11): what the command line says wins over what the checkpoint remembers,
a checkpoint is self-contained, and ``defectfm predict`` needs only the checkpoint and a folder."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cli import main
from tests.conftest import REPO, fit_tiny_demo, write_image

DEMO = str(REPO / "configs" / "clipmdc" / "demo.yaml")
TINY = str(REPO / "configs" / "clipmdc" / "model" / "tiny.yaml")
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]
TRAINED_TYPES = ["good", "hole", "scratch", "stain"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLIP-MDC trained for one epoch through ``lightning fit`` with the demo config, on generated data."""
    return fit_tiny_demo(tmp_path_factory.mktemp("trained"))


def lightning_predict(trained: dict[str, Path], out: Path, *extra: str) -> list[dict]:
    """README's ``lightning predict --config configs/clipmdc/demo.yaml --ckpt_path ...`` on the generated data."""
    code = main(["predict", "--config", DEMO, "--config", TINY, *QUIET, "--ckpt_path", str(trained["ckpt"]),
                 "--data.init_args.reader.init_args.root", str(trained["data"]), "--data.init_args.num_workers", "0",
                 "--trainer.callbacks.output_dir", str(out), *extra])
    assert code == 0
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@contextmanager
def training_data_gone(trained: dict[str, Path]) -> Iterator[None]:
    """The training folder is moved away for the duration (and put back for the other tests)."""
    away = trained["tmp"] / "moved_away"
    shutil.move(trained["data"], away)
    try:
        yield
    finally:
        shutil.move(away, trained["data"])


def new_folder(trained: dict[str, Path], root: Path) -> list[Path]:
    """A user's folder of new images: nested sub-folders, upper-case extensions, plus files that are not images."""
    images = sorted((trained["data"] / "plate" / "test").rglob("*.png"))[:5]
    kept = []
    for i, src in enumerate(images):
        dst = root / ("line_a" if i % 2 else "line_b/day2") / f"IMG_{i}.PNG"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        kept.append(dst)
    write_image(root / ".ipynb_checkpoints" / "IMG_0-checkpoint.png", np.zeros((8, 8, 3), np.uint8))
    write_image(root / "__MACOSX" / "line_a" / "._IMG_1.png", np.zeros((8, 8, 3), np.uint8))
    (root / "Thumbs.db").write_bytes(b"\0")
    (root / "notes.txt").write_text("shift 2")
    return kept


# ---------------------------------------------------------------------------- the command line wins
def test_readme_open_vocabulary_command_adds_dent(trained: dict[str, Path], tmp_path: Path) -> None:
    default = lightning_predict(trained, tmp_path / "default")
    assert list(default[0]["type_probabilities"]) == TRAINED_TYPES  # the checkpoint's names
    given = "[good,scratch,hole,stain,dent]"
    lines = lightning_predict(trained, tmp_path / "open", "--model.init_args.defect_types", given)
    assert lines and all(list(x["type_probabilities"]) == ["good", "scratch", "hole", "stain", "dent"] for x in lines)


def test_described_name_on_the_command_line_is_reported_by_its_name(trained: dict[str, Path], tmp_path: Path) -> None:
    given = json.dumps(["good", "scratch", "hole", "stain", "dent: a shallow depression pressed into the surface"])
    lines = lightning_predict(trained, tmp_path / "described", "--model.init_args.defect_types", given)
    assert lines and all(list(x["type_probabilities"]) == ["good", "scratch", "hole", "stain", "dent"] for x in lines)


def test_threshold_given_at_predict_changes_the_decisions(trained: dict[str, Path], tmp_path: Path) -> None:
    low = lightning_predict(trained, tmp_path / "low", "--model.init_args.image_threshold", "0.0")
    high = lightning_predict(trained, tmp_path / "high", "--model.init_args.image_threshold", "1.0")
    assert len(low) == len(high) > 0
    assert all(x["is_anomalous"] for x in low) and not any(x["is_anomalous"] for x in high)


def test_checkpoint_values_fill_what_the_command_line_does_not_give(trained: dict[str, Path], tmp_path: Path) -> None:
    from common.cli import DefectCLI

    cli = DefectCLI(args=["predict", "--ckpt_path", str(trained["ckpt"]), *QUIET,
                          "--model.init_args.pixel_threshold", "0.25",
                          "--data", "common.data.DefectDataModule", "--data.reader", "common.data.ImageFilesReader",
                          "--data.reader.root", str(trained["data"]), "--trainer.fast_dev_run", "true"])
    hp = cli.config.predict.model.init_args
    assert hp.pixel_threshold == 0.25  # typed
    assert hp.model.class_path == "clipmdc.presets.tiny" and hp.model.init_args.decoder_width == 48  # checkpoint
    assert hp.optimizer.init_args.lr == 0.002  # demo.yaml's, via the checkpoint: no experiment YAML given


# ---------------------------------------------------------------------------- self-contained checkpoint
def test_checkpoint_carries_model_config_vocabulary_and_data_settings(trained: dict[str, Path]) -> None:
    info = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)["defectfm"]
    assert info["model"]["class_path"] == "clipmdc.module.CLIPMDCModule"
    assert info["model"]["init_args"]["model"]["class_path"] == "clipmdc.presets.tiny"
    assert info["vocabulary"] == {"defect_types": TRAINED_TYPES, "object_names": ["fabric", "plate"]}
    assert info["data"]["image_size"] == 64 and info["data"]["resize"] == "stretch"
    assert info["data"]["normalisation"]["range"] == [0.0, 1.0]


def test_defectfm_predict_needs_only_the_checkpoint_and_the_folder(trained: dict[str, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "new_batch"
    images = new_folder(trained, folder)
    out = tmp_path / "out"
    with training_data_gone(trained):
        assert main(["predict", "--ckpt_path", str(trained["ckpt"]), "--input", str(folder), "--out", str(out),
                     "--num_workers", "0", "--trainer.enable_progress_bar", "false"]) == 0
    printed = capsys.readouterr().out
    assert f"defectfm predict: {len(images)} images in {folder}" in printed
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["path"] for x in lines) == sorted(str(p) for p in images)  # every image, nothing else
    assert all(list(x["type_probabilities"]) == TRAINED_TYPES for x in lines)  # the checkpoint's vocabulary
    assert len(list((out / "overlays").glob("*.png"))) == len(list((out / "maps").glob("*.png"))) == len(images)
    assert (out / "contact_sheet.png").is_file()
    with (out / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(images)


def test_defectfm_predict_overrides_win(trained: dict[str, Path], tmp_path: Path) -> None:
    image = sorted((trained["data"] / "fabric" / "test" / "hole").glob("*.png"))[0]
    out = tmp_path / "out"
    assert main(["predict", "--ckpt_path", str(trained["ckpt"]), "--input", str(image), "--out", str(out),
                 "--num_workers", "0", "--defect_types", "[good,hole,dent]", "--image_threshold", "0.0",
                 "--trainer.enable_progress_bar", "false"]) == 0
    (line,) = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert list(line["type_probabilities"]) == ["good", "hole", "dent"] and line["is_anomalous"] is True
    assert line["object"] == "fabric"  # found on the image's path among the checkpoint's objects


def test_lightning_predict_with_a_predict_reader_needs_no_training_folder(trained: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "new_batch"
    images = new_folder(trained, folder)
    out = tmp_path / "out"
    reader = json.dumps({"class_path": "common.data.ImageFilesReader", "init_args": {"root": str(folder)}})
    with training_data_gone(trained):
        assert main(["predict", "--config", DEMO, "--config", TINY, *QUIET, "--ckpt_path", str(trained["ckpt"]),
                     "--data.init_args.predict_reader", reader, "--data.init_args.num_workers", "0",
                     "--trainer.callbacks.output_dir", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == len(images) and all(list(x["type_probabilities"]) == TRAINED_TYPES for x in lines)


def test_predict_on_the_training_reader_says_it_predicts_the_test_split(trained: dict[str, Path], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    lines = lightning_predict(trained, tmp_path / "out")
    err = capsys.readouterr().err
    assert f"note: predicting the test split of {trained['data']} ({len(lines)} of " in err
    assert "defectfm predict --ckpt_path CKPT --input FOLDER" in err


# ---------------------------------------------------------------------------- one-line checkpoint errors
def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()  # (progress bars of weight loading may come first)
    assert code == 2, err
    errors = [x for x in err if x.startswith("error")]
    assert len(errors) == 1 and err[-1] == errors[0] and not any("Traceback" in x for x in err), err
    return errors[0]


def test_checkpoint_of_another_model_class(trained: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, [
        "test", "--model", "common.testing.TinySegModule", "--data", "common.data.DefectDataModule",
        "--data.reader", "common.data.MVTecReader", "--data.reader.root", str(trained["data"]),
        "--data.num_workers", "0", "--ckpt_path", str(trained["ckpt"]), *QUIET])
    assert line.startswith(f"error: --ckpt_path {trained['ckpt']} holds a clipmdc.module.CLIPMDCModule model, but "
                           "the config builds a common.testing.TinySegModule")


def test_checkpoint_with_weights_of_other_shapes_names_the_setting(trained: dict[str, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, [
        "predict", "--config", DEMO, "--config", TINY, *QUIET, "--ckpt_path", str(trained["ckpt"]),
        "--data.init_args.reader.init_args.root", str(trained["data"]), "--data.init_args.num_workers", "0",
        "--trainer.callbacks.output_dir", str(tmp_path / "out"), "--model.init_args.model.init_args.decoder_width",
        "16"])
    assert f"error: --ckpt_path {trained['ckpt']} does not fit the model built from the config (" in line
    assert "weight(s) of another shape, e.g. model." in line
    assert "settings that differ: model.init_args.model.init_args.decoder_width (checkpoint 48, now 16)" in line


# ---------------------------------------------------------------------------- stage 2
def test_defectfm_predict_with_a_stage2_checkpoint(classid_root: Path, tmp_path: Path) -> None:
    cfg = REPO / "configs" / "diffdefect"
    callbacks = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}])
    assert main(["fit", "--config", str(cfg / "stage2_openvocab.yaml"), "--config", str(cfg / "stage2_tiny.yaml"),
                 *QUIET, "--data.init_args.reader.init_args.root", str(classid_root), "--trainer.max_steps", "1",
                 "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
                 "--trainer.callbacks", callbacks, "--trainer.default_root_dir", str(tmp_path)]) == 0
    out = tmp_path / "out"
    assert main(["predict", "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"), "--input",
                 str(classid_root / "img_dir" / "test"), "--out", str(out), "--num_workers", "0",
                 "--defect_types", "[inclusion,patches,scratches,rust]", "--trainer.enable_progress_bar", "false"]) == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(x["vocabulary"] == ["good", "inclusion", "patches", "scratches", "rust"]
                                   for x in lines)
    assert (out / "contact_sheet.png").is_file() and len(list((out / "masks").glob("*.png"))) == 3


def test_load_module_rebuilds_a_checkpoint_without_config_or_data(trained: dict[str, Path]) -> None:
    from common.checkpoint import load_module

    with training_data_gone(trained):
        module = load_module(trained["ckpt"])
        override = load_module(trained["ckpt"], {"defect_types": ["good", "dent"]})
    state = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
    assert module.model.defect_types == TRAINED_TYPES and module.model.object_names == ["fabric", "plate"]
    assert override.model.defect_types == ["good", "dent"]
