"""The DataModule's class names reach ``data_vocabulary`` by ``link_arguments``, and the link does not break
command-line values set over config files or a checkpoint for a model with a preset function as ``class_path``
(jsonargparse passed the link's targets to the preset: :mod:`common.cli_links`)."""

from __future__ import annotations

from pathlib import Path

from common.cli import DefectCLI
from tests.conftest import REPO

CLIPMDC = ["--config", str(REPO / "configs" / "clipmdc" / "demo.yaml"),
           "--config", str(REPO / "configs" / "clipmdc" / "model" / "tiny.yaml")]
STAGE2 = ["--config", str(REPO / "configs" / "diffdefect" / "stage2_openvocab.yaml"),
          "--config", str(REPO / "configs" / "diffdefect" / "stage2_tiny.yaml")]


def test_a_value_set_over_config_files_for_a_preset_model() -> None:
    # without the fix: "add_function_arguments() got an unexpected keyword argument 'linked_targets'"
    cli = DefectCLI(args=[*CLIPMDC, "--model.init_args.image_threshold", "0.3", "--trainer.logger", "false"],
                    run=False)
    assert cli.config.model.init_args.model.class_path == "clipmdc.presets.tiny"
    assert cli.config.model.init_args.image_threshold == 0.3 and float(cli.model.image_threshold) == 0.3


def test_stage2_gets_the_datamodule_vocabulary(classid_root: Path) -> None:
    cli = DefectCLI(args=[*STAGE2, "--data.init_args.reader.init_args.root", str(classid_root),
                          "--model.init_args.top_k", "5", "--trainer.logger", "false"], run=False)
    assert cli.model.data_vocabulary == cli.datamodule.vocabulary == ["good", "inclusion", "patches", "scratches"]
    assert cli.model.names["test"] == cli.datamodule.vocabulary and cli.model.top_k == 5


def test_clipmdc_gets_the_datamodule_vocabulary_and_objects(mvtec_root: Path) -> None:
    """CLIP-MDC takes the data's names from the link (``data_vocabulary``, ``data_object_names``), not by reaching
    into ``trainer.datamodule``: the model's vocabulary is the data's as soon as the CLI has built it."""
    cli = DefectCLI(args=[*CLIPMDC, "--data.init_args.reader.init_args.root", str(mvtec_root),
                          "--trainer.logger", "false"], run=False)
    assert cli.model.data_vocabulary == cli.datamodule.vocabulary
    assert cli.model.data_object_names == cli.datamodule.object_names
    assert cli.model.model.defect_types == cli.datamodule.vocabulary
    assert cli.model.model.object_names == cli.datamodule.object_names
