"""The CLIP-MDC arms of the benchmark: ``configs/benchmarks/clipmdc_<regime>.yaml`` run through the project's CLI.

Each arm is the config file a user would run (``lightning fit --config configs/benchmarks/clipmdc_<regime>.yaml``),
stacked with a data config (any reader config in the ``configs/data/*.yaml`` style) and the benchmark's
:class:`~benchmarks.clipmdc.settings.Settings` as command-line overrides; :class:`common.cli.DefectCLI` builds
model, data and trainer (``run=False``), the benchmark fits, selects the best epoch on ``val/score`` (the arm's
``EarlyStopping`` and ``ModelCheckpoint``), calibrates the thresholds on val and tests. The resolved config is
returned for the JSON.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks import _decisions
from benchmarks.clipmdc.data import subsample
from benchmarks.clipmdc.settings import ANOMALY_KEYS, ARMS_DIR, EXTRA_KEYS, TYPE_KEYS, Settings, log


def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*num_workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*thresholds were not calibrated.*")


def _epoch_logger(tag: str, history: list[dict[str, float]]) -> Any:
    """A callback printing (and recording) the training loss, ``val/score`` and the elapsed time per epoch."""
    import lightning as L

    class EpochLog(L.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            m = trainer.callback_metrics
            row = {
                "epoch": trainer.current_epoch + 1,
                "train_loss": float(m["train/loss"]) if "train/loss" in m else float("nan"),
                "val_score": float(m["val/score"]) if "val/score" in m else float("nan"),
                "elapsed_s": time.perf_counter() - self.t0,
            }
            history.append(row)
            log(f"  {tag} epoch {row['epoch']}/{trainer.max_epochs}: loss {row['train_loss']:.4f}, "
                f"val/score {row['val_score']:.4f}, {row['elapsed_s']:.0f} s")

    return EpochLog()


@dataclass
class Arm:
    """A CLIP-MDC arm built by the CLI: its config files, overrides, and what ``DefectCLI`` instantiated."""

    regime: str
    config: Path
    args: list[str]
    module: Any
    datamodule: Any
    trainer: Any
    resolved: dict[str, Any]
    subsample: dict[str, Any] | None


def overrides(settings: Settings, workdir: Path, data_root: Path | None) -> list[str]:
    """The benchmark's command-line overrides over the arm and data configs."""
    args = ["--trainer.max_epochs", str(settings.max_epochs),
            "--model.init_args.scheduler.init_args.T_max", str(settings.max_epochs),
            "--model.init_args.model.init_args.memory.init_args.coreset_ratio", str(settings.coreset_ratio),
            "--trainer.default_root_dir", str(workdir), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.log_every_n_steps", "10", "--data.init_args.num_workers", "0"]
    for key, value in (("image_size", settings.image_size), ("batch_size", settings.batch_size),
                       ("eval_batch_size", settings.eval_batch_size)):
        if value is not None:
            args += [f"--data.init_args.{key}", str(value)]
    if data_root is not None:
        args += ["--data.init_args.reader.init_args.root", str(data_root)]
    return args


def build_arm(regime: str, data_config: Path | None, settings: Settings, workdir: Path,
              data_root: Path | None = None, extra: list[str] | None = None) -> Arm:
    """Builds the arm ``regime`` through :class:`common.cli.DefectCLI` (``run=False``), subsampled; ``extra``:
    further command-line overrides (last, so they win)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from common.cli import DefectCLI

    config = ARMS_DIR / f"clipmdc_{regime}.yaml"
    args = ["--config", str(config)] + (["--config", str(data_config)] if data_config else [])
    args += overrides(settings, workdir / regime, data_root) + list(extra or [])
    cli = DefectCLI(args=args, run=False)
    for cb in cli.trainer.callbacks:  # the config's checkpoint folder (under runs/) -> the benchmark's work folder
        if isinstance(cb, ModelCheckpoint):
            cb.dirpath = str(workdir / regime / "checkpoints")
    cut = subsample(cli.datamodule.reader, settings.per_class)
    resolved = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_validation=True))
    return Arm(regime, config, args, cli.model, cli.datamodule, cli.trainer, resolved, cut)


def _load_best(module: Any, trainer: Any) -> str | None:
    """Loads the best checkpoint (``val/score``) of the arm's ModelCheckpoint into ``module``; its path."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    path = ckpt.best_model_path if ckpt is not None else ""
    if path:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state, strict=True)
    return path or None


def run_arm(arm: Arm, eval_split: str) -> dict[str, Any]:
    """Fits the arm (budget rule of its config), tests the best epoch, returns metrics, epochs and timings."""
    module, dm, trainer, regime = arm.module, arm.datamodule, arm.trainer, arm.regime
    history: list[dict[str, float]] = []
    trainer.callbacks.append(_epoch_logger(f"clipmdc/{regime}", history))
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t0
    best_path = _load_best(module, trainer)
    calibration = _decisions.calibrate(module, dm, normal_only=regime == "normal_only")
    t0 = time.perf_counter()
    loader = dm.test_dataloader() if eval_split == "test" else dm.val_dataloader()
    raw = trainer.test(module, dataloaders=loader, verbose=False)[0]
    test_s = time.perf_counter() - t0
    metrics = {k.split("/", 1)[1]: float(v) for k, v in raw.items() if k.startswith("test/")}
    result: dict[str, Any] = {k: metrics[k] for k in (*ANOMALY_KEYS, *EXTRA_KEYS, *TYPE_KEYS) if k in metrics}
    scores = [h["val_score"] for h in history]
    result["decisions"] = {
        **calibration,
        "test_image_threshold": metrics.get("image_threshold"),
        "test_far": metrics.get("image_far"),
        "test_miss_rate": metrics.get("image_miss_rate"),
    }
    result["epochs"] = len(history)
    result["best_epoch"] = (scores.index(max(scores)) + 1) if best_path and scores else len(history)
    result["stopped_early"] = len(history) < trainer.max_epochs
    result["val_score_history"] = scores
    result["final_train_loss"] = history[-1]["train_loss"] if history else None
    result["train_s"] = train_s
    result["test_s"] = test_s
    result["train_images"] = len(dm.split_records()["train"])
    result["parameters"] = module.model.parameter_counts()
    result["vocabulary"] = list(module.model.defect_types)
    result["config"] = str(arm.config.relative_to(ARMS_DIR.parents[1]))
    return result


def clipmdc_predict(module: Any) -> Callable:
    model = module.model.eval()

    def predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = model(image)
        return out.image_prob, out.anomaly_prob, out.type_logits

    return predict
