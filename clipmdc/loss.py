"""CLIP-MDC loss: a dict of named terms weighted by a dict (Mask2Former's ``SetCriterion`` style).

Terms (each a scalar; a term with no valid sample in the batch is an exact 0 that keeps the graph):

* ``focal``: binary focal loss of ``anomaly_map`` against ``mask``, on samples with ``has_mask``;
* ``dice``: soft dice of ``sigmoid(anomaly_map)`` against ``mask``, per sample, on samples with ``has_mask``
  (an empty mask predicted empty scores 0);
* ``type_ce``: cross-entropy of ``type_map`` against ``class_mask`` on samples with ``has_mask``
  (``class_mask == -1`` pixels ignored);
* ``image_type_ce``: cross-entropy of ``type_logits`` against ``defect_type_id`` (``-1`` ignored);
* ``image_bce``: BCE of ``image_score`` against ``label`` (``-1`` ignored);
* ``topk_bce``: BCE of ``topk_score`` (top-k pooled anomaly map) against ``label``: the image prediction of
  the weakly supervised regime (multiple-instance learning), also a useful consistency term otherwise;
* ``total``: the weighted sum.

The regimes act through the batch the LightningModule hands over (:mod:`clipmdc.regimes`): which samples
have pixel labels, which labels are ignored, which come from synthetic anomalies. The loss itself only
follows ``has_mask``, ``label``, ``defect_type_id`` and ``class_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipmdc.output import CLIPMDCOutput
from common.data.types import DefectBatch

DEFAULT_WEIGHTS: dict[str, float] = {
    "focal": 1.0,
    "dice": 1.0,
    "type_ce": 1.0,
    "image_type_ce": 0.5,
    "image_bce": 1.0,
    "topk_bce": 0.5,
}
"""Default term weights."""


def _zero(ref: torch.Tensor) -> torch.Tensor:
    return ref.sum() * 0.0  # keeps the graph (DDP sees every parameter used)


def _check_ids(ids: torch.Tensor, num_classes: int, name: str) -> None:
    if ids.numel() and int(ids.max()) >= num_classes:
        raise ValueError(
            f"{name} has id {int(ids.max())} but the output vocabulary has {num_classes} classes: ids must index "
            "the model's vocabulary (the LightningModule remaps data ids when the vocabulary is replaced)"
        )


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Mean binary focal loss (Lin et al.) of logits against {0, 1} targets of the same shape."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)  # probability given to the true class
    loss = (1.0 - p_t) ** gamma * ce
    if alpha is not None:
        loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
    return loss.mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean per-sample soft dice loss of ``(N, 1, H, W)`` logits against {0, 1} targets."""
    prob = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1.0 - (2.0 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)).mean()


class CLIPMDCLoss(nn.Module):
    """Weighted dict of loss terms for :class:`~clipmdc.output.CLIPMDCOutput`.

    Args:
        weights: Term weights; missing terms take :data:`DEFAULT_WEIGHTS`, a weight of 0 disables a term
            (it is still computed and logged).
        focal_gamma: Focusing parameter of the focal loss.
        focal_alpha: Positive-class weight of the focal loss (``None``: unweighted).
    """

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
    ) -> None:
        super().__init__()
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha

    def forward(self, output: CLIPMDCOutput, batch: DefectBatch) -> dict[str, torch.Tensor]:
        """Computes every term.

        Args:
            output: Model output for the batch (``anomaly_map`` ``(B, 1, H, W)`` at the mask resolution).
            batch: Targets: ``mask`` ``(B, 1, H, W)``, ``has_mask`` ``(B,)``, ``class_mask`` ``(B, H, W)``,
                ``label`` ``(B,)``, ``defect_type_id`` ``(B,)`` (ids in the output's vocabulary).

        Returns:
            ``{"focal", "dice", "type_ce", "image_type_ce", "image_bce", "topk_bce", "total"}`` scalars.
        """
        amap = output.anomaly_map.float()  # (B, 1, H, W)
        if amap.shape[-2:] != batch.mask.shape[-2:]:
            raise ValueError(
                f"anomaly_map {tuple(amap.shape)} and mask {tuple(batch.mask.shape)} sizes differ"
            )
        terms: dict[str, torch.Tensor] = {}
        pix = batch.has_mask.bool()  # (B,)
        if pix.any():
            target = batch.mask[pix].float()  # (P, 1, H, W)
            terms["focal"] = focal_loss(amap[pix], target, self.focal_gamma, self.focal_alpha)
            terms["dice"] = dice_loss(amap[pix], target)
            cls = batch.class_mask[pix].long()  # (P, H, W)
            _check_ids(cls, output.type_map.shape[1], "class_mask")
            terms["type_ce"] = (
                F.cross_entropy(output.type_map[pix].float(), cls, ignore_index=-1)
                if (cls >= 0).any()
                else _zero(output.type_map)
            )
        else:
            terms["focal"] = terms["dice"] = _zero(amap)
            terms["type_ce"] = _zero(output.type_map)

        ids = batch.defect_type_id.long()
        _check_ids(ids, output.type_logits.shape[1], "defect_type_id")
        terms["image_type_ce"] = (
            F.cross_entropy(output.type_logits.float(), ids, ignore_index=-1)
            if (ids >= 0).any()
            else _zero(output.type_logits)
        )
        labelled = batch.label >= 0  # (B,)
        if labelled.any():
            y = batch.label[labelled].float()
            terms["image_bce"] = F.binary_cross_entropy_with_logits(output.image_score[labelled].float(), y)
            terms["topk_bce"] = F.binary_cross_entropy_with_logits(output.topk_score[labelled].float(), y)
        else:
            terms["image_bce"] = _zero(output.image_score)
            terms["topk_bce"] = _zero(output.topk_score)
        terms["total"] = sum(self.weights[k] * terms[k] for k in DEFAULT_WEIGHTS)
        return terms
