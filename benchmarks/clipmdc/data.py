"""Data of the CLIP-MDC benchmark: the reader (optionally subsampled), the DataModule of a regime, split counts,
and the one evaluation loop every peer goes through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


# ---------------------------------------------------------------------------------------------------- data
def subsample(reader: Any, per_class: int | None) -> dict[str, Any] | None:
    """Cuts ``reader``'s records to the first ``per_class`` (by path) of every (split, class), in place.

    Returns:
        What was done, for the JSON (``None`` when nothing was cut).
    """
    if per_class is None:
        return None
    records = reader.records()
    groups: dict[tuple[Any, str], list] = {}
    for rec in records:
        groups.setdefault((rec.split, rec.defect_type), []).append(rec)
    kept = sorted((r for recs in groups.values() for r in recs[:per_class]), key=lambda r: str(r.image_path))
    reader._records = kept
    return {
        "rule": f"the first {per_class} images by path of every (dataset split, class), before the train/val/test "
        "split; the same records for every model",
        "per_class": per_class,
        "images": {"before": len(records), "after": len(kept)},
    }


PEER_DATA_KEYS = ("image_size", "batch_size", "eval_batch_size", "num_workers", "split", "split_ratios",
                  "val_from", "val_fraction", "seed", "few_shot", "few_shot_per", "weak_labels", "vocabulary")
"""The DataModule arguments a peer's DataModule copies from the arm's resolved config."""


def peer_datamodule(arm_dm: Any, data_args: dict[str, Any], train_filter: str, augment: str) -> Any:
    """A DataModule over the arm's (subsampled) reader with the arm's split and sizes, but the peer's training
    filter and augmentation (the split does not depend on either: the same val and test images)."""
    from common.data import DefectDataModule

    kwargs = {k: data_args[k] for k in PEER_DATA_KEYS if k in data_args}
    kwargs["split_ratios"] = tuple(kwargs.get("split_ratios", (0.6, 0.2, 0.2)))
    return DefectDataModule(arm_dm.reader, train_filter=train_filter, augment=augment, **kwargs)


def split_counts(dm: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split, recs in dm.split_records().items():
        counts: dict[str, int] = {}
        for r in recs:
            counts[r.defect_type] = counts.get(r.defect_type, 0) + 1
        out[split] = dict(sorted(counts.items()))
    return out


# ---------------------------------------------------------------------------------------------------- eval
@torch.inference_mode()
def evaluate(
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    loader: Any,
    num_types: int | None = None,
) -> dict[str, float]:
    """The metric code every model goes through (CLIP-MDC's ``trainer.test`` uses the same factories).

    Args:
        predict: ``(B, 3, H, W)`` images in [0, 1] -> image scores ``(B,)``, anomaly maps ``(B, 1, H, W)`` at
            the input size, defect-type logits ``(B, K+1)`` or ``None``.
        loader: Test (or val) loader of ``DefectBatch`` es.
        num_types: Vocabulary size for the type metrics (``None``: no type output).

    Returns:
        ``image_auroc``, ``image_ap``, ``image_f1max``, ``pixel_auroc``, ``pixel_ap``, ``pixel_aupro`` and, with
        ``num_types``, ``type_accuracy`` and ``type_macro_f1``.
    """
    from common.metrics import anomaly_metrics, defect_type_metrics

    image_metrics = anomaly_metrics(mode="exact", pixel=False)
    pixel_metrics = anomaly_metrics(mode="exact", image=False)
    type_metrics = defect_type_metrics(num_types, prefix="type_") if num_types else None
    for batch in loader:
        scores, maps, type_logits = predict(batch.image)
        known = batch.label >= 0
        image_metrics.update(scores=scores[known].float(), labels=batch.label[known])
        pixels = batch.has_mask.bool()
        if pixels.any():
            if maps.shape[-2:] != batch.mask.shape[-2:]:
                raise ValueError(f"map {tuple(maps.shape)} and mask {tuple(batch.mask.shape)} sizes differ")
            pixel_metrics.update(anomaly_maps=maps[pixels].float(), masks=batch.mask[pixels])
        typed = batch.defect_type_id >= 0
        if type_metrics is not None and type_logits is not None and typed.any():
            type_metrics.update(type_logits[typed].float(), batch.defect_type_id[typed])
    out = {**image_metrics.compute(), **pixel_metrics.compute()}
    if type_metrics is not None:
        out.update(type_metrics.compute())
    return {k: float(v) for k, v in out.items()}


def val_score(metrics: dict[str, float]) -> float:
    """The budget rule's selection score: the mean of I-AUROC, P-AUROC, AUPRO and AP_loc (as
    :class:`common.metrics.mean_score.MeanScore` logs ``val/score`` for CLIP-MDC)."""
    return sum(metrics[k] for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")) / 4
