"""Tiny stand-ins for tests and smoke runs that configs and test suites import by ``class_path`` or name.

They live in the package, not under ``tests/``: the name ``tests`` is not ours alone (torch-fidelity installs a
top-level ``tests`` package), so a ``class_path: tests.<module>.<Class>`` resolves to this project's file only
while pytest happens to put the repository first on ``sys.path``.

* :class:`TinySegModule`: a LightningModule that tests the CLI plumbing independently of the model families.
* :func:`register_tiny_clip`: a tiny open_clip architecture (random init, built in milliseconds).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable

from common.data import DefectBatch

TINY_CLIP = "defectfm-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> str:
    """Registers :data:`TINY_CLIP` with open_clip (idempotent) and returns its name."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="tiny_clip_"))
        (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
        open_clip.add_model_config(folder)
    return TINY_CLIP


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
