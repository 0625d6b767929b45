"""Metrics for defect inspection, as torchmetrics ``Metric`` subclasses usable in any LightningModule.

Every AUROC/AUPRO in the code base is the one defined here. Build one collection with a factory and clone it
per stage, never ``train_acc``/``val_acc`` triplets::

    metrics = anomaly_metrics(mode="binned")
    self.val_metrics = metrics.clone(prefix="val/")
    self.test_metrics = metrics.clone(prefix="test/")
    ...
    self.val_metrics.update(scores=s, labels=y, anomaly_maps=maps, masks=masks)  # kwargs routed by name

Image metrics update with ``(scores, labels)``, pixel metrics with ``(anomaly_maps, masks)``; a collection
passes each metric only the keyword arguments its ``update`` names. All pixel metrics share one state, so the
collection stores the pixel scores once.

A metric that is undefined on the data (pixel metrics without any defect pixel, e.g. data without masks; image
AUROC without normal or without defective images; mIoU or accuracy without samples) is ``NaN``
(:data:`UNDEFINED`), never 0.5 or 0.0 as if measured; printed tables show it as ``-`` (:func:`format_metric`).
"""

from __future__ import annotations

from torchmetrics import MetricCollection

from common.metrics._base import UNDEFINED, BinaryScoreMetric, Mode, component_weights, format_metric
from common.metrics.anomaly import ImageAP, ImageAUROC, ImageF1Max, PixelAP, PixelAUROC, PixelF1Max
from common.metrics.aupro import AUPRO, binned_aupro, exact_aupro
from common.metrics.classification import DefectTypeAccuracy, DefectTypeConfusionMatrix, DefectTypeMacroF1
from common.metrics.detection import DetectionMAP, boxes_from_masks, instances_from_mask
from common.metrics.generation import FID, FrechetDistanceLite0, InceptionScore
from common.metrics.segmentation import MeanIoU, PerClassIoU

__all__ = [
    "AUPRO",
    "FID",
    "FrechetDistanceLite0",
    "BinaryScoreMetric",
    "DefectTypeAccuracy",
    "DefectTypeConfusionMatrix",
    "DefectTypeMacroF1",
    "DetectionMAP",
    "ImageAP",
    "ImageAUROC",
    "ImageF1Max",
    "InceptionScore",
    "MeanIoU",
    "PerClassIoU",
    "PixelAP",
    "PixelAUROC",
    "PixelF1Max",
    "UNDEFINED",
    "anomaly_metrics",
    "binned_aupro",
    "boxes_from_masks",
    "component_weights",
    "defect_type_metrics",
    "exact_aupro",
    "format_metric",
    "instances_from_mask",
    "segmentation_metrics",
]


def anomaly_metrics(
    prefix: str | None = None,
    mode: Mode = "exact",
    num_bins: int = 10_000,
    score_range: tuple[float, float] = (0.0, 1.0),
    sigmoid: bool = False,
    fpr_limit: float = 0.3,
    image: bool = True,
    pixel: bool = True,
) -> MetricCollection:
    """Image AUROC/AP/F1-max and pixel AUROC/AP/AUPRO as one ``MetricCollection``.

    Keys: ``image_auroc``, ``image_ap``, ``image_f1max``, ``pixel_auroc``, ``pixel_ap``, ``pixel_aupro``
    (after ``prefix``).

    Args:
        prefix: key prefix, e.g. ``"val/"`` (or leave None and use ``.clone(prefix=...)`` per stage).
        mode: ``"exact"`` or ``"binned"`` for the pixel metrics; image metrics (one score per image) are
            always exact.
        num_bins: bins for binned mode.
        score_range: ``(lo, hi)`` of the pixel scores for binned mode.
        sigmoid: apply a sigmoid to pixel scores before binning (logit maps).
        fpr_limit: AUPRO's FPR limit.
        image: include the image metrics.
        pixel: include the pixel metrics.
    """
    metrics = {}
    if image:
        metrics.update(image_auroc=ImageAUROC(), image_ap=ImageAP(), image_f1max=ImageF1Max())
    if pixel:
        kw = {"mode": mode, "num_bins": num_bins, "score_range": score_range, "sigmoid": sigmoid}
        metrics.update(
            pixel_auroc=PixelAUROC(**kw), pixel_ap=PixelAP(**kw), pixel_aupro=AUPRO(fpr_limit=fpr_limit, **kw)
        )
    if not metrics:
        raise ValueError("anomaly_metrics: at least one of image/pixel must be True.")
    return MetricCollection(metrics, prefix=prefix)


def defect_type_metrics(num_classes: int, prefix: str | None = None) -> MetricCollection:
    """Defect-type ``accuracy`` and ``macro_f1`` (scalars, loggable) sharing one confusion matrix."""
    return MetricCollection(
        {"accuracy": DefectTypeAccuracy(num_classes), "macro_f1": DefectTypeMacroF1(num_classes)},
        prefix=prefix,
    )


def segmentation_metrics(
    num_classes: int, ignore_index: int | None = None, prefix: str | None = None
) -> MetricCollection:
    """Segmentation ``miou`` (scalar) as a ``MetricCollection`` (per-class IoU: :class:`PerClassIoU`)."""
    return MetricCollection({"miou": MeanIoU(num_classes, ignore_index=ignore_index)}, prefix=prefix)
