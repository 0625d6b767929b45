"""Data of the CLIP-MDC benchmark: the reader (optionally subsampled), the DataModule of a regime, split counts,
and the one evaluation loop every peer goes through."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


# ---------------------------------------------------------------------------------------------------- data
def reader_for(root: Path, per_class: int | None) -> Any:
    """The Magnetic Tile reader, optionally cut to the first ``per_class`` images of every class (quick runs)."""
    from common.data import MagneticTileReader

    reader = MagneticTileReader(root)
    if per_class is not None:
        by_class: dict[str, list] = {}
        for rec in reader.records():
            by_class.setdefault(rec.defect_type, []).append(rec)
        reader._records = sorted(
            (r for recs in by_class.values() for r in recs[:per_class]), key=lambda r: str(r.image_path)
        )
    return reader


def datamodule(reader: Any, cfg: dict[str, Any], regime: str, augment: str = "light") -> Any:
    from common.data import DefectDataModule

    return DefectDataModule(
        reader,
        image_size=cfg["image_size"],
        batch_size=cfg["batch_size"],
        eval_batch_size=cfg["eval_batch_size"],
        num_workers=0,  # 2 shared cores: decoding in the main process, no oversubscription
        split="random",
        split_ratios=(0.6, 0.2, 0.2),
        seed=0,
        train_filter="normal" if regime == "normal_only" else "all",
        weak_labels=regime == "weakly_supervised",
        augment=augment,
    )


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
