"""``null`` on the command line means ``None``, at any depth of nested ``class_path`` arguments (issue 11)."""

from __future__ import annotations

import pytest

from common.cli import DefectCLI

BASE = ["--model", "clipmdc.module.CLIPMDCModule", "--model.model", "clipmdc.presets.tiny",
        "--data", "common.data.DefectDataModule", "--data.reader", "common.data.FolderReader",
        "--data.reader.root", "."]


def parse(*extra: str) -> DefectCLI:
    return DefectCLI(args=[*BASE, *extra, "--trainer.logger", "false"], run=False)


@pytest.mark.parametrize("spelling", ["null", "~", "Null"])
def test_null_in_a_nested_class_gives_none(spelling: str) -> None:
    cli = parse("--data.init_args.reader.init_args.mask_dir", "masks",  # set, then cleared again
                "--data.init_args.reader.init_args.mask_dir", spelling)
    assert cli.config.data.init_args.reader.init_args.mask_dir is None
    assert cli.datamodule.reader.mask_dir is None


def test_null_one_level_down_and_for_a_class_argument() -> None:
    cli = parse("--model.init_args.synthetic_defect_type", "null",
                "--model.init_args.model.init_args.memory", "null")
    assert cli.config.model.init_args.synthetic_defect_type is None
    assert cli.model.synthetic_defect_type is None and cli.model.model.memory is None


def test_ordinary_values_still_pass_through_nested_classes() -> None:
    cli = parse("--data.init_args.reader.init_args.mask_dir", "masks",
                "--data.init_args.reader.init_args.mask_suffix", "_GT",
                "--data.init_args.reader.init_args.mask_threshold", "127")
    given = cli.config.data.init_args.reader.init_args
    assert (given.mask_dir, given.mask_suffix, given.mask_threshold) == ("masks", "_GT", 127)


def test_the_literal_text_none_stays_text() -> None:  # YAML: only null / ~ are None; "None" is a string
    cli = parse("--data.init_args.reader.init_args.mask_suffix", "None")
    assert cli.datamodule.reader.mask_suffix == "None"
