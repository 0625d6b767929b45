"""The CLIP-MDC arms of the benchmark: one ``offline_real`` CLIP-MDC per regime, trained and tested through Lightning."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import _decisions
from benchmarks.clipmdc.data import datamodule
from benchmarks.clipmdc.settings import ANOMALY_KEYS, EXTRA_KEYS, TYPE_KEYS, log


# ---------------------------------------------------------------------------------------------------- CLIP-MDC
def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*num_workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # fit runs without validation here; the thresholds are calibrated right after it (_decisions.calibrate)
    warnings.filterwarnings("ignore", message=".*thresholds were not calibrated.*")


def _epoch_logger(tag: str) -> Any:
    """A callback printing the mean training loss and the elapsed time after every epoch."""
    import lightning as L

    class EpochLog(L.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            loss = trainer.callback_metrics.get("train/loss")
            log(
                f"  {tag} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: last-batch loss "
                f"{float(loss) if loss is not None else float('nan'):.4f}, {time.perf_counter() - self.t0:.0f} s"
            )

    return EpochLog()


def clipmdc_model(cfg: dict[str, Any], regime: str = "supervised") -> Any:
    """``offline_real``, with a normal-reference memory (same coreset ratio as PatchCore) in ``memory_regimes``."""
    from clipmdc.memory import NormalMemory
    from clipmdc.presets import offline_real

    memory = NormalMemory(coreset_ratio=cfg["coreset_ratio"]) if regime in cfg["memory_regimes"] else None
    return offline_real(memory=memory, memory_weight=cfg["memory_weight"][regime])


def run_clipmdc(
    reader: Any, cfg: dict[str, Any], regime: str, eval_split: str
) -> tuple[dict[str, Any], Any, Any]:
    """Trains CLIP-MDC (``offline_real``) in ``regime`` through Lightning and tests it.

    Returns:
        The metrics and timings, the trained ``CLIPMDCModule`` and the DataModule.
    """
    import lightning as L

    from clipmdc.module import CLIPMDCModule
    from common.synthesis.generator import PerlinAnomalyGenerator

    L.seed_everything(0, workers=True, verbose=False)
    dm = datamodule(reader, cfg, regime)
    synthesis = PerlinAnomalyGenerator(seed=0) if regime in ("weakly_supervised", "normal_only") else None
    module = CLIPMDCModule(
        clipmdc_model(cfg, regime),
        regime=regime,
        optimizer=functools.partial(torch.optim.AdamW, lr=cfg["lr"], weight_decay=cfg["weight_decay"]),
        scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=cfg["epochs"]),
        synthesis=synthesis,
        synthetic_defect_type=None,
        metrics_mode="exact",
        seed=0,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=cfg["epochs"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,  # no model selection: the last epoch is tested
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        callbacks=[_epoch_logger(f"clipmdc/{regime}")],
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t0
    final_loss = trainer.callback_metrics.get("train/loss")  # before test() resets the callback metrics
    calibration = _decisions.calibrate(module, dm, normal_only=regime == "normal_only")
    t0 = time.perf_counter()
    if eval_split == "test":
        raw = trainer.test(module, datamodule=dm, verbose=False)[0]
    else:  # development only: the module's test metrics on the validation loader
        raw = trainer.test(module, dataloaders=dm.val_dataloader(), verbose=False)[0]
    test_s = time.perf_counter() - t0
    metrics = {k.split("/", 1)[1]: float(v) for k, v in raw.items() if k.startswith("test/")}
    keep = (*ANOMALY_KEYS, *EXTRA_KEYS, *TYPE_KEYS)
    result = {k: metrics[k] for k in keep if k in metrics}
    result["decisions"] = {
        **calibration,
        "test_image_threshold": metrics.get("image_threshold"),
        "test_far": metrics.get("image_far"),
        "test_miss_rate": metrics.get("image_miss_rate"),
    }
    result["final_train_loss"] = float(final_loss) if final_loss is not None else None
    result["train_s"] = train_s
    result["test_s"] = test_s
    result["train_images"] = len(dm.split_records()["train"])
    result["parameters"] = module.model.parameter_counts()
    result["vocabulary"] = list(module.model.defect_types)
    return result, module, dm


def clipmdc_predict(module: Any) -> Callable:
    model = module.model.eval()

    def predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = model(image)
        return out.image_prob, out.anomaly_prob, out.type_logits

    return predict
