"""COCO box and mask mAP (@0.5 and @0.5:0.95) through pycocotools, plus mask -> instance helpers.

:class:`DetectionMAP` is torchmetrics' ``MeanAveragePrecision`` pinned to the ``pycocotools`` backend (which
RLE-encodes masks with ``pycocotools.mask`` and runs ``COCOeval``), reduced to the four figures we report.
Reused rather than rewritten: it already handles the COCO conversion, RLE and DDP syncing.

Degenerate input: COCO reports -1 when there is no ground-truth instance; we return NaN (undefined, as every
metric of :mod:`common.metrics`) with a ``UserWarning``.

Boxes use the COCO pixel convention: a mask covering columns ``x0..x1`` (inclusive) has the box
``[x0, y0, x1 + 1, y1 + 1]`` in ``xyxy``, i.e. the same box ``pycocotools.mask.toBbox`` gives, so box and mask
IoUs agree for rectangular masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchmetrics.utilities import rank_zero_warn
from torchvision.ops import box_convert

__all__ = ["DetectionMAP", "boxes_from_masks", "instances_from_mask"]

IoUType = Literal["bbox", "segm"]


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks.

    Args:
        masks: ``(K, H, W)`` bool/0-1 instance masks.

    Returns:
        ``(K, 4)`` float32 boxes ``[x0, y0, x1, y1]`` with exclusive ``x1``/``y1`` (COCO convention); an empty
        mask gives ``[0, 0, 0, 0]``.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W); got shape {tuple(masks.shape)}.")
    m = masks.bool()
    boxes = torch.zeros(m.shape[0], 4, dtype=torch.float32, device=m.device)
    if m.shape[0] == 0:
        return boxes
    rows, cols = m.any(dim=2), m.any(dim=1)  # (K, H), (K, W)
    nonempty = rows.any(dim=1)
    h_idx = torch.arange(m.shape[1], device=m.device)
    w_idx = torch.arange(m.shape[2], device=m.device)
    big = max(m.shape[1], m.shape[2]) + 1
    y0 = torch.where(rows, h_idx, big).amin(dim=1)
    y1 = torch.where(rows, h_idx, -1).amax(dim=1) + 1
    x0 = torch.where(cols, w_idx, big).amin(dim=1)
    x1 = torch.where(cols, w_idx, -1).amax(dim=1) + 1
    stacked = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[nonempty] = stacked[nonempty]
    return boxes


def instances_from_mask(
    mask: Tensor, score_map: Tensor | None = None, label: int = 0, min_area: int = 1
) -> dict[str, Tensor]:
    """Splits a binary mask into instances (8-connected components) for :class:`DetectionMAP`.

    Args:
        mask: ``(H, W)`` binary mask (predicted or ground truth).
        score_map: optional ``(H, W)`` anomaly map; an instance's score is its maximum inside the component
            (1.0 for every instance when ``None``).
        label: class id given to every instance.
        min_area: components smaller than this many pixels are dropped.

    Returns:
        ``{"masks": (K, H, W) bool, "boxes": (K, 4) float32 xyxy, "scores": (K,) float32, "labels": (K,) int64}``.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W); got shape {tuple(mask.shape)}.")
    if score_map is not None and score_map.shape != mask.shape:
        raise ValueError(
            f"Shape mismatch: score_map has shape {tuple(score_map.shape)} but mask has {tuple(mask.shape)}."
        )
    lab, num = ndimage.label(mask.detach().cpu().numpy().astype(bool), structure=np.ones((3, 3), dtype=bool))
    lab_t = torch.from_numpy(lab).to(mask.device)
    ids = torch.arange(1, num + 1, device=mask.device)
    masks = lab_t.unsqueeze(0) == ids.view(-1, 1, 1)  # (K, H, W)
    masks = masks[masks.flatten(1).sum(1) >= min_area]
    if score_map is None:
        scores = torch.ones(masks.shape[0], dtype=torch.float32, device=mask.device)
    else:
        s = score_map.float().unsqueeze(0).expand_as(masks)
        scores = torch.where(masks, s, torch.full_like(s, -float("inf"))).flatten(1).amax(1)
    return {
        "masks": masks,
        "boxes": boxes_from_masks(masks),
        "scores": scores,
        "labels": torch.full((masks.shape[0],), label, dtype=torch.long, device=mask.device),
    }


class DetectionMAP(MeanAveragePrecision):
    """COCO mAP@0.5 and mAP@0.5:0.95 for boxes and/or masks (pycocotools).

    ``update(preds, target)`` takes torchmetrics' format: lists (one dict per image) with ``boxes`` ``(K, 4)``,
    ``labels`` ``(K,)``, ``scores`` ``(K,)`` (predictions) and ``masks`` ``(K, H, W)`` bool for ``"segm"``. When
    ``"bbox"`` is evaluated and an item has masks but no boxes, the boxes are derived with
    :func:`boxes_from_masks`.

    ``compute`` -> ``{"bbox_map": , "bbox_map_50": , "segm_map": , "segm_map_50": }`` (float32 scalars, only
    for the requested IoU types), NaN instead of COCO's -1 when there is no ground truth.

    Args:
        iou_type: ``"bbox"``, ``"segm"`` or both.
        box_format: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"`` for the given boxes.
        max_detections: COCO's ``maxDets`` for the reported figures (100 by default).
        **kwargs: forwarded to ``MeanAveragePrecision`` / ``torchmetrics.Metric``.
    """

    def __init__(
        self,
        iou_type: IoUType | Sequence[IoUType] = ("bbox", "segm"),
        box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy",
        max_detections: int = 100,
        **kwargs: Any,
    ) -> None:
        iou_type = (iou_type,) if isinstance(iou_type, str) else tuple(iou_type)
        kwargs.setdefault("max_detection_thresholds", [1, 10, int(max_detections)])
        super().__init__(box_format=box_format, iou_type=iou_type, backend="pycocotools", **kwargs)

    def _with_boxes(self, items: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        if "bbox" not in self.iou_type:
            return items
        out = []
        for item in items:
            if "boxes" not in item and "masks" in item:
                boxes = boxes_from_masks(item["masks"])
                if self.box_format != "xyxy":
                    boxes = box_convert(boxes, "xyxy", self.box_format)
                item = {**item, "boxes": boxes}
            out.append(item)
        return out

    def update(self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> None:
        """Adds a batch of images (see class docstring for the item format)."""
        super().update(self._with_boxes(preds), self._with_boxes(target))

    def compute(self) -> dict[str, Tensor]:
        res = super().compute()
        single = len(self.iou_type) == 1
        out: dict[str, Tensor] = {}
        for t in self.iou_type:
            for name in ("map", "map_50"):
                key = name if single else f"{t}_{name}"
                value = float(res[key])
                if value < 0:
                    rank_zero_warn(f"DetectionMAP: {t} {name} undefined (no ground truth); returning nan.")
                    value = float("nan")
                out[f"{t}_{name}"] = torch.tensor(value, dtype=torch.float32)
        return out
