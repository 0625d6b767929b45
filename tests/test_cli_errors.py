"""One-line errors of the CLI (issue 11): a misspelt key names the key and the closest valid one; a folder to
predict with no images. Each ends with one line on stderr and exit code 2, through ``common.cli.main``.
(Checkpoint errors: tests/test_cli_ckpt.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.cli import main
from tests.conftest import REPO

DEMO = str(REPO / "configs" / "clipmdc" / "demo.yaml")


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()  # (progress bars of weight loading may come first)
    assert code == 2, err
    errors = [x for x in err if x.startswith("error")]
    assert len(errors) == 1 and err[-1] == errors[0] and not any("Traceback" in x for x in err), err
    return errors[0]


@pytest.mark.parametrize(("typed", "expected"), [
    (["--data.init_args.imgae_size", "64"],
     "data.init_args.imgae_size: not an argument of common.data.DefectDataModule (did you mean image_size?)"),
    (["--model.init_args.imag_threshold", "0.3"],
     "model.init_args.imag_threshold: not an argument of clipmdc.module.CLIPMDCModule (did you mean image_threshold?)"),
    (["--model.init_args.model.init_args.decoder_widht", "8"],
     "model.init_args.model.init_args.decoder_widht: not an argument of clipmdc.presets.offline_real "
     "(did you mean decoder_width?)"),
    (["--data.init_args.reader.init_args.mask_dri", "masks"],
     "data.init_args.reader.init_args.mask_dri: not an argument of common.data.MVTecReader"),
    (["--trainr.max_epochs", "3"], "unrecognized argument --trainr.max_epochs (did you mean --trainer.max_epochs?)"),
])
def test_misspelt_key_on_the_command_line(typed: list[str], expected: str, capsys: pytest.CaptureFixture) -> None:
    assert expected in one_line_error(capsys, ["fit", "--config", DEMO, *typed])


def test_misspelt_key_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  init_args:\n    batch_sise: 4\n")
    line = one_line_error(capsys, ["fit", "--config", DEMO, "--config", str(typo)])
    assert "data.init_args.batch_sise: not an argument of common.data.DefectDataModule (did you mean batch_size?)" \
        in line


def test_wrong_value_type_is_one_line_too(capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, ["fit", "--config", DEMO, "--data.init_args.batch_size", "many"])
    assert "batch_size" in line


def test_predict_folder_without_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    (empty / ".ipynb_checkpoints").mkdir(parents=True)
    (empty / ".ipynb_checkpoints" / "a.png").write_bytes(b"")  # hidden: not an image to predict
    (empty / "notes.txt").write_text("no images here")
    ckpt = tmp_path / "any.ckpt"  # the folder is checked before the checkpoint is used
    line = one_line_error(capsys, ["predict", "--ckpt_path", str(ckpt), "--input", str(empty), "--out",
                                   str(tmp_path / "out")])
    assert line == f"error: --ckpt_path {ckpt}: file not found"
    import torch

    torch.save({"state_dict": {}, "defectfm": {"model": {"class_path": "clipmdc.module.CLIPMDCModule"},
                                               "data": {"image_size": 64}}}, ckpt)
    line = one_line_error(capsys, ["predict", "--ckpt_path", str(ckpt), "--input", str(empty), "--out",
                                   str(tmp_path / "out")])
    assert line.startswith(f"error: {empty}: no images in the folder or its sub-folders")


def test_missing_checkpoint_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "runs" / "last.ckpt"
    line = one_line_error(capsys, ["test", "--config", DEMO, "--ckpt_path", str(missing)])
    assert line == f"error: --ckpt_path {missing}: file not found"


def test_a_file_that_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bogus = tmp_path / "model.ckpt"
    bogus.write_text("not a checkpoint")
    line = one_line_error(capsys, ["predict", "--config", DEMO, "--ckpt_path", str(bogus)])
    assert line.startswith(f"error: --ckpt_path {bogus}: not a readable checkpoint")


def test_a_constructor_complaint_is_one_line(capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, ["fit", "--config", DEMO, "--model.init_args.regime", "fully_supervised"])
    assert line == "error: regime must be one of ('supervised', 'weakly_supervised', 'normal_only'), " \
                   "got 'fully_supervised'"


def test_defectfm_predict_missing_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, ["predict", "--input", str(tmp_path)])
    assert line == "error: defectfm predict: the following arguments are required: --ckpt_path, --out"
