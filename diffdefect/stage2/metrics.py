"""The stage-2 evaluation metrics of one stage (validation or test), all from :mod:`common.metrics`.

Keys (after the stage prefix, e.g. ``test/``): held-out loss terms ``mask``, ``dice``, ``cls``; per-class IoU
``iou_<name>``, ``miou``, ``base_iou`` / ``novel_iou`` (mean IoU over the base / novel classes present, when the
vocabulary has such classes); image ``accuracy`` / ``macro_f1`` (the image class read from the masks); COCO
``bbox_map(_50)`` / ``segm_map(_50)`` (boxes from masks); ``image_auroc``, ``image_ap``, ``image_f1max``,
``pixel_auroc``, ``pixel_ap``, ``pixel_aupro`` (anomaly map = 1 - background probability).

Every metric is a torchmetrics object: states are summed over DDP ranks inside ``compute()``, which every rank
calls at the end of the epoch whatever its own batches held (a metric without any update reports its
no-data value, with a warning), so no rank waits on another.

Resolution: the working resolution of the resize mode (:mod:`common.data.tiling`): ``image_size`` (stretch), the
image's own pixels inside ``image_size`` (letterbox: the padding is cropped away before any metric), the stitched
maps at native scale times ``tile_scale`` (tile). In ``tile`` mode the held-out losses are per tile and COCO mAP
is not computed (queries of different tiles are different instances; the module warns once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.wrappers import ClasswiseWrapper

from common.data.tiling import crop_content
from common.data.types import DefectBatch
from common.metrics import DetectionMAP, MeanIoU, PerClassIoU, anomaly_metrics, defect_type_metrics
from diffdefect.stage2.criterion import SetCriterion
from diffdefect.stage2.model import Stage2Output
from diffdefect.stage2.postprocess import image_classes, instance_predictions, semantic_scores, upsample_masks
from diffdefect.stage2.targets import detection_targets, set_targets

LOSS_TERMS = ("mask", "dice", "cls")


class Stage2Metrics(nn.Module):
    """The metrics of one stage over its vocabulary.

    Args:
        names: The stage's class names (background first).
        base: The training (base) class names; the others are novel.
        mode: ``"binned"`` or ``"exact"`` pixel anomaly metrics.
        detection: Compute COCO mAP (pycocotools; the slowest metric).
        top_k: Instances kept per image for detection.
    """

    def __init__(self, names: Sequence[str], base: Sequence[str], mode: str = "binned", detection: bool = True,
                 top_k: int = 100) -> None:
        super().__init__()
        k, base = len(names), set(base)
        seg = {"miou": MeanIoU(k, ignore_index=-1),
               "iou": ClasswiseWrapper(PerClassIoU(k, ignore_index=-1), labels=list(names), prefix="iou_")}
        for key, group in (("base_iou", [i for i, n in enumerate(names) if i and n in base]),
                           ("novel_iou", [i for i, n in enumerate(names) if i and n not in base])):
            if group:
                seg[key] = MeanIoU(k, ignore_index=-1, classes=group)
        parts = {"losses": MetricCollection({t: MeanMetric() for t in LOSS_TERMS}), "segmentation": MetricCollection(seg),
                 "image_class": defect_type_metrics(k), "anomaly": anomaly_metrics(mode=mode)}  # type: ignore[arg-type]
        if detection:
            parts["detection"] = MetricCollection({"detection": DetectionMAP(("bbox", "segm"))})
        self.parts = nn.ModuleDict(parts)
        self.top_k = top_k

    @torch.no_grad()
    def update(self, out: Stage2Output, batch: DefectBatch, class_mask: torch.Tensor, type_ids: torch.Tensor,
               criterion: SetCriterion, target_mode: str = "semantic") -> None:
        """Adds a batch (``stretch`` or ``letterbox``: with content boxes, each image's own pixels only).

        Args:
            out: The model output for ``batch.image``.
            batch: The batch.
            class_mask: ``(B, H, W)`` ids in this stage's vocabulary (-1: unknown to it).
            type_ids: ``(B,)`` image class ids in this stage's vocabulary (-1: unknown).
            criterion: The training loss (its per-layer terms are the held-out losses).
            target_mode: Target masks of the held-out losses (:func:`~diffdefect.stage2.targets.set_targets`).
        """
        size = tuple(batch.image.shape[-2:])
        scores = semantic_scores(out.class_logits, out.pred_masks, size)  # (B, K, H, W)
        has = batch.has_mask.bool()
        self.update_losses(out, has, class_mask, criterion, target_mode)
        self.update_maps(scores, batch, class_mask, type_ids)
        if "detection" not in self.parts or not has.any():
            return
        if batch.content_box is None:
            self.parts["detection"].update(instance_predictions(out.class_logits[has], out.pred_masks[has], size,
                                                                top_k=self.top_k), detection_targets(class_mask[has]))
            return
        for i in torch.nonzero(has).flatten().tolist():  # letterbox: instances and targets inside the image only
            box = batch.content_box[i]
            masks = crop_content(upsample_masks(out.pred_masks[i : i + 1].float(), size), box)  # (1, Q, h, w)
            self.parts["detection"].update(
                instance_predictions(out.class_logits[i : i + 1], masks, tuple(masks.shape[-2:]), top_k=self.top_k),
                detection_targets(crop_content(class_mask[i : i + 1], box)))

    @torch.no_grad()
    def update_losses(self, out: Stage2Output, has: torch.Tensor, class_mask: torch.Tensor, criterion: SetCriterion,
                      target_mode: str = "semantic") -> None:
        """Adds the held-out losses of the images (tiles) ``has`` ``(B,)`` that have masks."""
        if not has.any():
            return
        masks, tlabels = set_targets(class_mask[has], target_mode)
        sub = Stage2Output(out.pred_masks[has], out.class_logits[has], out.mask_embeddings[has])
        terms = criterion.layer_losses(sub, masks, tlabels, float(max(1, sum(len(x) for x in masks))))
        for name, metric in self.parts["losses"].items():
            metric.update(terms[name].detach(), int(has.sum()))

    @torch.no_grad()
    def update_maps(self, scores: torch.Tensor, batch: DefectBatch, class_mask: torch.Tensor,
                    type_ids: torch.Tensor) -> None:
        """Adds the figures read from ``(B, K, H, W)`` semantic scores at the working resolution (segmentation,
        anomaly, image class), each image cropped to its content box when the batch has them (letterbox)."""
        boxes = batch.content_box if batch.content_box is not None else [None] * len(scores)
        if batch.content_box is not None:  # images of different content sizes: one at a time
            for i, box in enumerate(boxes):
                self._maps(crop_content(scores[i : i + 1], box), batch.has_mask[i : i + 1].bool(),
                           crop_content(class_mask[i : i + 1], box), crop_content(batch.mask[i : i + 1], box),
                           batch.label[i : i + 1], type_ids[i : i + 1])
            return
        self._maps(scores, batch.has_mask.bool(), class_mask, batch.mask, batch.label, type_ids)

    def _maps(self, scores: torch.Tensor, has: torch.Tensor, class_mask: torch.Tensor, mask: torch.Tensor,
              label: torch.Tensor, type_ids: torch.Tensor) -> None:
        labels = scores.argmax(1)  # (B, H, W)
        if has.any():
            self.parts["segmentation"].update(labels[has], class_mask[has])
            anomaly = 1 - scores[has, 0]  # (b, H, W)
            self.parts["anomaly"].update(anomaly_maps=anomaly, masks=mask[has], scores=anomaly.flatten(1).amax(1),
                                         labels=label[has])
        known = type_ids >= 0
        if known.any():
            self.parts["image_class"].update(image_classes(labels, scores.shape[1])[known], type_ids[known])

    def compute(self) -> dict[str, torch.Tensor]:
        """Every figure of the epoch (on every rank), then the states are reset."""
        out: dict[str, torch.Tensor] = {}
        for part in self.parts.values():
            out.update(part.compute())
            part.reset()
        return out
