"""Training regimes of CLIP-MDC, expressed as what the loss may see of a training batch.

* ``supervised``: masks and defect types as given by the data.
* ``weakly_supervised``: image labels only. Real anomalous samples contribute no pixel label (even if the
  dataset has masks); normal samples are known to be defect-free everywhere (all-zero mask); synthetic Perlin
  anomalies give pseudo-masks. The top-k pooled anomaly map is trained as the image prediction
  (``topk_bce``).
* ``normal_only``: real anomalous samples are ignored entirely; normal samples plus synthetic Perlin
  anomalies (the defect class of this regime) are the training data.

Synthetic anomalies are added on the batch's device to normal samples when a generator is given (any regime):
their pixels get ``synthetic_type_id`` in ``class_mask`` (``-1`` = unknown type, ignored by ``type_ce``).
Ignored labels are ``-1``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from common.data.types import DefectBatch
from common.data.vocabulary import remap_ids

REGIMES = ("supervised", "weakly_supervised", "normal_only")


def check_regime(regime: str) -> str:
    """Returns ``regime`` or raises ``ValueError``."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    return regime


def remap_type_ids(batch: DefectBatch, mapping: torch.Tensor | None) -> DefectBatch:
    """Maps data vocabulary ids to model vocabulary ids (``mapping[data_id] = model_id`` or ``-1``) with
    :func:`common.data.vocabulary.remap_ids`.

    ``None`` returns the batch unchanged (same vocabulary). Negative ids stay as they are.
    """
    if mapping is None:
        return batch
    return replace(batch, defect_type_id=remap_ids(batch.defect_type_id, mapping),
                   class_mask=remap_ids(batch.class_mask, mapping))


def prepare_training_batch(
    batch: DefectBatch,
    regime: str,
    synthesis: Any | None = None,
    synthetic_type_id: int = -1,
    generator: torch.Generator | None = None,
) -> DefectBatch:
    """Applies a regime (and synthetic anomalies) to a training batch.

    Args:
        batch: Collated batch; ids already in the model's vocabulary.
        regime: One of :data:`REGIMES`.
        synthesis: A :class:`~common.synthesis.generator.PerlinAnomalyGenerator` (anything with
            ``batch(images, generator=...) -> result`` having ``image``, ``mask``, ``label``), or ``None``.
        synthetic_type_id: Vocabulary id given to synthetic anomalies (``-1``: unknown type).
        generator: Seed source for the synthesis.

    Returns:
        A new batch (inputs untouched): ``image``, ``mask``, ``has_mask``, ``label``, ``defect_type_id`` and
        ``class_mask`` adjusted.
    """
    check_regime(regime)
    image, mask = batch.image, batch.mask.clone()
    has_mask, label = batch.has_mask.bool().clone(), batch.label.clone()
    type_id, class_mask = batch.defect_type_id.clone(), batch.class_mask.clone()
    normal = label == 0  # (B,)

    if regime in ("weakly_supervised", "normal_only"):
        anomalous = ~normal
        has_mask = normal.clone()  # defect-free images are known to be all-zero; others have no pixel label
        mask[anomalous] = 0
        class_mask[normal] = 0
        class_mask[anomalous] = -1
        if regime == "normal_only":  # real anomalies are not training data in this regime
            label[anomalous] = -1
            type_id[anomalous] = -1

    if synthesis is not None and bool(normal.any()):
        idx = normal.nonzero().squeeze(1)  # (N,)
        res = synthesis.batch(image[idx], generator=generator)
        hit = res.label.to(idx.device).bool()  # (N,)
        if hit.any():
            sel = idx[hit]
            image = image.clone()
            image[sel] = res.image[hit].to(image.dtype)
            syn_mask = (res.mask[hit] > 0.5).to(mask.dtype)  # (S, 1, H, W)
            mask[sel] = syn_mask
            has_mask[sel] = True
            label[sel] = 1
            type_id[sel] = synthetic_type_id
            class_mask[sel] = torch.where(syn_mask[:, 0] > 0, synthetic_type_id, 0).to(class_mask.dtype)

    return replace(
        batch,
        image=image,
        mask=mask,
        has_mask=has_mask,
        label=label,
        defect_type_id=type_id,
        class_mask=class_mask,
    )
