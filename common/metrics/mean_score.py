"""One number to select on: the mean of several logged metrics, for ``EarlyStopping`` / ``ModelCheckpoint``.

Lightning's callbacks monitor one key. A benchmark that stops every model by the same rule (the mean of the
validation I-AUROC, P-AUROC, AUPRO and AP_loc, ``configs/benchmarks/*.yaml``) logs that mean with this callback;
list it *before* ``EarlyStopping`` (Lightning keeps the order of the other callbacks and runs checkpoint callbacks
last).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch


class MeanScore(L.Callback):
    """Puts the mean of ``keys`` into ``trainer.callback_metrics[name]`` after every validation run.

    Args:
        keys: Logged metric names (e.g. ``val/image_auroc``); all must be present, else nothing is written.
        name: Name of the mean.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("val/image_auroc", "val/pixel_auroc", "val/pixel_aupro", "val/pixel_ap"),
        name: str = "val/score",
    ) -> None:
        self.keys = list(keys)
        self.name = name

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if all(k in metrics for k in self.keys):
            metrics[self.name] = torch.stack([torch.as_tensor(metrics[k]).float().cpu() for k in self.keys]).mean()
