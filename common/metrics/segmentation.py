"""Semantic segmentation metrics: per-class IoU and mean IoU (mIoU) over a pixel confusion matrix.

``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` accumulated over the whole data set (not averaged per image).
mIoU averages over the classes present in the ground truth *or* the predictions; a class absent from both has
an undefined IoU and is left out of the mean (rather than counted as 0 or 1, which would move mIoU with the
number of unused classes). In the per-class vector such classes get ``absent_value`` (default NaN: undefined).
With no class present at all, mIoU is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from common.metrics.classification import ConfusionMatrixBase

__all__ = ["PerClassIoU", "MeanIoU"]


class _IoUBase(ConfusionMatrixBase):
    higher_is_better = True

    def _iou(self) -> tuple[Tensor, Tensor]:
        """``(iou, present)``: ``(C,)`` float64 IoU (0 where undefined) and ``(C,)`` bool presence."""
        tp, fp, fn = self._per_class()
        union = tp + fp + fn
        present = union > 0
        return torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp)), present


class PerClassIoU(_IoUBase):
    """Per-class IoU.

    ``update(preds, target)``: ``preds`` ``(N, H, W)`` integer labels or ``(N, C, H, W)`` scores (argmax),
    ``target`` ``(N, H, W)`` integer labels. ``compute`` -> ``(C,)`` float32.

    Args:
        num_classes: number of classes ``C`` (including background if it is a class).
        ignore_index: target value whose pixels are skipped (e.g. 255), or ``None``.
        absent_value: value reported for classes absent from both targets and predictions (NaN: undefined).
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, absent_value: float = float("nan"), **kwargs: Any
    ) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, **kwargs)
        self.absent_value = float(absent_value)

    def compute(self) -> Tensor:
        iou, present = self._iou()
        return torch.where(present, iou, torch.full_like(iou, self.absent_value)).float()


class MeanIoU(_IoUBase):
    """Mean IoU over classes present in targets or predictions; NaN (with a warning) if none.

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value whose pixels are skipped, or ``None``.
        include_background: if False, class 0 is left out of the mean.
        classes: average over these class ids only (e.g. the base or the novel classes of an open-vocabulary
            test); ``None``: all.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        include_background: bool = True,
        classes: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, **kwargs)
        self.include_background = bool(include_background)
        self.classes = None if classes is None else [int(c) for c in classes]

    def compute(self) -> Tensor:
        iou, present = self._iou()
        if self.classes is not None:
            iou, present = iou[self.classes], present[self.classes]
        elif not self.include_background:
            iou, present = iou[1:], present[1:]
        if not present.any():
            self._warn("no class present in targets or predictions; returning nan.")
            return torch.tensor(float("nan"), device=self.device)
        return iou[present].mean().float()
