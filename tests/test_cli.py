"""The `lightning`/`defectfm` entry point and every YAML under configs/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.cli import DefectCLI, main
from tests.conftest import REPO

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "corpus")  # corpus/: name maps


def test_help_lists_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "common.cli", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("fit", "validate", "test", "predict", "demo-data"):
        assert cmd in out.stdout


def test_console_scripts_exist() -> None:
    bindir = Path(sys.executable).parent
    for name in ("lightning", "defectfm", "defectfm-demo-data"):
        assert (bindir / name).exists(), f"console script {name} not installed"


def test_trainer_presets_exist() -> None:
    names = {p.stem for p in (REPO / "configs" / "trainer").glob("*.yaml")}
    assert {"default", "debug", "cpu", "gpu_bf16", "ddp_bf16", "fsdp_bf16", "multinode"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_config_parses(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    assert isinstance(cfg, dict) and cfg, f"{path} is empty"
    # parse (not instantiate) through the real CLI parser, as `lightning fit --config` would
    args = ["fit", "--config", str(path), "--print_config"]
    if "class_path" not in (cfg.get("model") or {"class_path": None}):  # an overlay: stack it on its base
        base = REPO / "configs" / "clipmdc" / "demo.yaml"
        args = ["fit", "--config", str(base), "--config", str(path), "--print_config"]
    elif "model" not in cfg:
        args = ["fit", "--config", str(path), "--model", "common.testing.TinySegModule",
                "--data", "common.data.DefectDataModule", "--data.reader", "common.data.FolderReader",
                "--data.reader.root", ".", "--print_config"]
    with pytest.raises(SystemExit) as e:
        DefectCLI(args=args)
    assert e.value.code == 0


def test_fit_test_predict_smoke(tmp_path: Path, mvtec_root: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "model:\n  class_path: common.testing.TinySegModule\n"
        "data:\n  class_path: common.data.DefectDataModule\n  init_args:\n"
        "    image_size: 16\n    batch_size: 4\n    num_workers: 0\n    split: random\n"
        f"    reader:\n      class_path: common.data.MVTecReader\n      init_args:\n        root: {mvtec_root}\n"
        f"trainer:\n  max_epochs: 2\n  default_root_dir: {tmp_path / 'runs'}\n"
    )
    trainer_cfg = REPO / "configs" / "trainer" / "cpu.yaml"
    assert main(["fit", "--config", str(cfg), "--config", str(trainer_cfg),
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]) == 0
    ckpts = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    assert main(["test", "--config", str(cfg), "--config", str(trainer_cfg), "--ckpt_path", str(ckpts[-1]),
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]) == 0
    # stacking the debug preset: one batch of fit, no checkpoint
    assert main(["fit", "--config", str(cfg), "--config", str(REPO / "configs/trainer/debug.yaml")]) == 0


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_last_checkpoint_is_written_every_epoch(path: Path) -> None:
    """``save_last`` on a monitored ModelCheckpoint refreshes last.ckpt only when the metric improves (Lightning
    2.x), so a resumed run would restart from the best epoch, not the last: configs keep it on an unmonitored one."""
    callbacks = ((yaml.safe_load(path.read_text()) or {}).get("trainer") or {}).get("callbacks") or []
    for cb in callbacks:
        args = cb.get("init_args") or {}
        if cb.get("class_path", "").endswith("ModelCheckpoint") and args.get("save_last"):
            assert args.get("monitor") is None, f"{path}: save_last on a ModelCheckpoint monitoring {args['monitor']}"


DEBUG = REPO / "configs" / "trainer" / "debug.yaml"
OVERLAY_BASES = {  # configs that complete another one: stacked on it
    "clipmdc/model/tiny.yaml": "clipmdc/demo.yaml",
    "diffdefect/stage1_tiny.yaml": "stage1_diffusion.yaml",
    "diffdefect/stage1_fsdp.yaml": "stage1_diffusion.yaml",
    "diffdefect/stage1_multinode.yaml": "stage1_diffusion.yaml",
    "diffdefect/stage2_tiny.yaml": "diffdefect/stage2_openvocab.yaml",
}


class TrainerOnlyCLI(DefectCLI):
    """Parses like ``lightning fit`` and builds only the Trainer (and its callbacks), without running it: model
    and data of the real presets would load weights and data this test does not need."""

    def instantiate_classes(self) -> None:
        cfg = self.config.clone()
        cfg[self.subcommand].model = cfg[self.subcommand].data = None
        self.config_init = self.parser.instantiate_classes(cfg)
        self.model = self.datamodule = None
        self.trainer = self.instantiate_trainer()

    def _run_subcommand(self, subcommand: str) -> None:
        pass


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_debug_preset_stacks_on_every_config(path: Path) -> None:
    """README: ``lightning fit --config EXPERIMENT.yaml --config configs/trainer/debug.yaml`` is a one-batch smoke
    run for every config, trainer presets (GPU, DDP, FSDP, multi-node) included."""
    rel = path.relative_to(REPO / "configs").as_posix()
    stack = [path]
    if rel in OVERLAY_BASES:
        stack = [REPO / "configs" / OVERLAY_BASES[rel], path]
    elif rel.startswith("trainer/") or "model" not in (yaml.safe_load(path.read_text()) or {}):
        stack = [REPO / "configs" / "clipmdc" / "demo.yaml", path]  # trainer presets, data-only configs
    args = ["fit", *[x for p in [*stack, DEBUG] for x in ("--config", str(p))]]
    trainer = TrainerOnlyCLI(args=args).trainer
    assert trainer.fast_dev_run and trainer.num_nodes == 1 and trainer.num_devices == 1
    assert type(trainer.accelerator).__name__ == "CPUAccelerator" and trainer.logger is None
    from lightning.pytorch.callbacks import ModelCheckpoint

    # the experiment's ModelCheckpoint callbacks are left out (Lightning's default one saves nothing here)
    assert not any(isinstance(cb, ModelCheckpoint) and (cb.save_last or cb.dirpath) for cb in trainer.callbacks)

