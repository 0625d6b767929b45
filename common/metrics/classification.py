"""Defect-type classification metrics: accuracy, macro-F1 and the confusion matrix.

The three are views of one ``(C, C)`` confusion-matrix state (rows = target, columns = prediction,
``dist_reduce_fx="sum"``), so a ``MetricCollection`` groups them and keeps one tensor. Written on a shared
``bincount`` rather than torchmetrics' three classes so that "classes absent from the data" has one defined
meaning for all of them: macro-F1 averages over the classes present in the targets *or* the predictions (a
class never seen and never predicted has an undefined F1 and is left out, not counted as 0). With no sample at
all, accuracy and macro-F1 are undefined: NaN with a ``UserWarning``.

The same base serves the segmentation metrics (:mod:`common.metrics.segmentation`) on pixels.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

__all__ = ["DefectTypeAccuracy", "DefectTypeMacroF1", "DefectTypeConfusionMatrix", "ConfusionMatrixBase"]


class ConfusionMatrixBase(Metric):
    """Accumulates a ``(C, C)`` confusion matrix from class predictions or scores.

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value to skip (e.g. 255 for "void" pixels), or ``None``.
        **kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.add_state(
            "confmat",
            default=torch.zeros(self.num_classes, self.num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def _to_labels(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Turns ``preds`` (labels shaped like ``target``, or scores with a class axis at dim 1) into labels."""
        if preds.shape != target.shape:
            if (
                preds.ndim == target.ndim + 1
                and preds.shape[1] == self.num_classes
                and (preds.shape[:1] + preds.shape[2:] == target.shape)
            ):
                preds = preds.argmax(dim=1)
            else:
                raise ValueError(
                    f"Shape mismatch: predictions have shape {tuple(preds.shape)} and targets "
                    f"{tuple(target.shape)}; expected equal shapes (class labels) or predictions of shape "
                    f"(N, {self.num_classes}, ...) (class scores)."
                )
        elif torch.is_floating_point(preds):
            raise ValueError("Predictions with the target's shape must be integer class labels, not floats.")
        preds, target = preds.reshape(-1).long(), target.reshape(-1).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            preds, target = preds[keep], target[keep]
        for name, t in (("predictions", preds), ("targets", target)):
            if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
                raise ValueError(
                    f"{name} must be class indices in [0, {self.num_classes}); got "
                    f"[{int(t.min())}, {int(t.max())}]."
                )
        return preds, target

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Adds a batch.

        Args:
            preds: ``(N, ...)`` integer class labels, or ``(N, C, ...)`` class scores/logits (argmax is taken).
            target: ``(N, ...)`` integer class labels.
        """
        preds, target = self._to_labels(preds, target)
        c = self.num_classes
        self.confmat += torch.bincount(target * c + preds, minlength=c * c).reshape(c, c).to(self.confmat)

    def _per_class(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(tp, fp, fn)``: ``(C,)`` float64 each."""
        cm = self.confmat.double()
        tp = cm.diagonal()
        return tp, cm.sum(0) - tp, cm.sum(1) - tp

    def _warn(self, message: str) -> None:
        rank_zero_warn(f"{type(self).__name__}: {message}", UserWarning)


class DefectTypeAccuracy(ConfusionMatrixBase):
    """Overall (micro) accuracy: correct / all. ``compute`` -> scalar float32; NaN without samples."""

    higher_is_better = True

    def compute(self) -> Tensor:
        total = self.confmat.sum()
        if total == 0:
            self._warn("no samples; returning nan.")
            return torch.tensor(float("nan"), device=self.device)
        return (self.confmat.diagonal().sum().double() / total).float()


class DefectTypeMacroF1(ConfusionMatrixBase):
    """Macro-F1 over the classes present in targets or predictions. ``compute`` -> scalar float32."""

    higher_is_better = True

    def compute(self) -> Tensor:
        tp, fp, fn = self._per_class()
        present = (tp + fp + fn) > 0
        if not present.any():
            self._warn("no samples; returning nan.")
            return torch.tensor(float("nan"), device=self.device)
        f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
        return f1.mean().float()


class DefectTypeConfusionMatrix(ConfusionMatrixBase):
    """The ``(C, C)`` confusion matrix, rows = target class, columns = predicted class.

    Not a scalar: log it as a figure or table, not with ``self.log``.

    Args:
        num_classes: number of classes.
        normalize: ``None`` (counts, int64), ``"true"`` (rows sum to 1), ``"pred"`` (columns sum to 1) or
            ``"all"``; rows/columns without samples stay 0 (no NaN).
        ignore_index: target value to skip.
    """

    higher_is_better = None

    def __init__(
        self,
        num_classes: int,
        normalize: Literal["true", "pred", "all"] | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, **kwargs)
        if normalize not in (None, "true", "pred", "all"):
            raise ValueError(f"normalize must be None, 'true', 'pred' or 'all'; got {normalize!r}.")
        self.normalize = normalize

    def compute(self) -> Tensor:
        cm = self.confmat
        if self.normalize is None:
            return cm.clone()
        cm = cm.double()
        if self.normalize == "true":
            denom = cm.sum(1, keepdim=True)
        elif self.normalize == "pred":
            denom = cm.sum(0, keepdim=True)
        else:
            denom = cm.sum()
        return torch.where(denom > 0, cm / denom.clamp(min=1), torch.zeros_like(cm)).float()
