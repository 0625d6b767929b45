"""Synthetic batches for the CLIP-MDC tests."""

from __future__ import annotations

import torch

from common.data.types import DefectBatch


def make_batch(batch: int = 4, size: int = 64, seed: int = 0, num_types: int = 2) -> DefectBatch:
    """Alternating normal/anomalous samples; anomalous ones have a square defect of type 1..num_types."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g)
    label = torch.tensor([i % 2 for i in range(batch)])
    type_id = torch.tensor([0 if i % 2 == 0 else 1 + (i // 2) % num_types for i in range(batch)])
    mask = torch.zeros(batch, 1, size, size)
    mask[label == 1, :, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    image = torch.where(mask.bool(), torch.ones_like(image), image)
    return DefectBatch(
        image=image,
        mask=mask,
        has_mask=torch.ones(batch, dtype=torch.bool),
        label=label,
        defect_type_id=type_id,
        class_mask=(mask[:, 0] * type_id[:, None, None]).long(),
        object_id=torch.zeros(batch, dtype=torch.long),
        defect_type=["good" if t == 0 else f"type{int(t)}" for t in type_id],
        object_name=["bottle"] * batch,
        caption=[None] * batch,
        path=[f"img_{i}.png" for i in range(batch)],
        sample_id=torch.arange(batch),
    )
