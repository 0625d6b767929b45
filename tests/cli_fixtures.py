"""A test-only LightningModule so CLI plumbing is tested independently of the model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable

from common.data import DefectBatch


class TinySegModule(LightningModule):
    """A 3x3 conv predicting the defect mask; records the vocabulary it was given.

    Args:
        optimizer: Optimizer factory (from YAML).
        defect_types: Defect-type names (linked from the data's vocabulary in tests).
    """

    def __init__(self, optimizer: OptimizerCallable = torch.optim.Adam, defect_types: list[str] | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(3, 1, 3, padding=1)
        self.optimizer = optimizer
        self.defect_types = defect_types

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)  # (B, 1, H, W) logits

    def _loss(self, batch: DefectBatch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(batch.image), batch.mask)

    def training_step(self, batch: DefectBatch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, batch_size=len(batch))
        return loss

    def validation_step(self, batch: DefectBatch, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), batch_size=len(batch))

    def test_step(self, batch: DefectBatch, batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch), batch_size=len(batch))

    def predict_step(self, batch: DefectBatch, batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch.image))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())
