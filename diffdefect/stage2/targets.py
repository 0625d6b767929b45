"""From a :class:`~common.data.types.DefectBatch` to stage-2 targets: class ids in the model's vocabulary,
per-image target masks for set prediction, detection ground truth, and the open-vocabulary training filter.

Ids: ``DefectBatch.class_mask`` holds ids into the *DataModule* vocabulary (0 = ``"good"`` / background, -1 =
unknown). The model has its own vocabulary per stage (base classes in training, base + novel at test), always
with the background at index 0; :func:`common.data.vocabulary.remap_ids` maps data ids to model ids by name (-1
where the model does not know the class).

Set targets (:func:`set_targets`), one per image:

* ``"semantic"`` (default, Mask2Former's semantic-segmentation training): one target mask per class present,
  background (model id 0) included, as a class like any other;
* ``"instance"``: the background as one mask, every 8-connected component of a defect class as its own target.

Pixels with id -1 (a class unknown to the model) belong to no target mask: the mask loss treats them as "not
this target" for every target, i.e. no query is pushed to cover them, but none is rewarded for it either.

Open-vocabulary training (:func:`base_only`): with ``novel="drop"`` (default) an image that shows any class
outside the training classes is removed from the training batch, so the novel defects are never seen by the
head, not even unlabelled (the strict protocol; NEU-Seg's multi-class images that contain the held-out class are
dropped). ``novel="ignore"`` keeps such images and only sets the novel pixels to -1 (unknown).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from common.metrics import instances_from_mask

TARGET_MODES = ("semantic", "instance")
NOVEL_POLICIES = ("drop", "ignore")
_EIGHT = np.ones((3, 3), dtype=bool)


def base_only(class_mask: torch.Tensor, policy: str = "drop") -> tuple[torch.Tensor, torch.Tensor]:
    """Applies the open-vocabulary training policy to model-id class masks.

    Args:
        class_mask: ``(B, H, W)`` model ids, -1 for classes outside the training vocabulary.
        policy: ``"drop"`` or ``"ignore"`` (module docstring).

    Returns:
        ``keep`` ``(B,)`` bool (images to train on) and the class masks of the kept images.
    """
    if policy not in NOVEL_POLICIES:
        raise ValueError(f"novel policy must be one of {NOVEL_POLICIES}, got {policy!r}")
    if policy == "ignore":
        return torch.ones(class_mask.shape[0], dtype=torch.bool, device=class_mask.device), class_mask
    keep = ~(class_mask < 0).flatten(1).any(1)  # (B,)
    return keep, class_mask[keep]


def set_targets(class_mask: torch.Tensor, mode: str = "semantic", min_area: int = 1) -> tuple[list[torch.Tensor],
                                                                                             list[torch.Tensor]]:
    """Per-image target masks and labels for set prediction.

    Args:
        class_mask: ``(B, H, W)`` model ids (0 = background, -1 = unknown: in no target).
        mode: ``"semantic"`` or ``"instance"`` (module docstring).
        min_area: Instance mode: components smaller than this are dropped.

    Returns:
        ``masks``: per image ``(N_b, H, W)`` float {0, 1}; ``labels``: per image ``(N_b,)`` int64 model ids.
    """
    if mode not in TARGET_MODES:
        raise ValueError(f"target mode must be one of {TARGET_MODES}, got {mode!r}")
    masks, labels = [], []
    for cm in class_mask:
        ids = [int(c) for c in torch.unique(cm) if c >= 0]
        ms, ls = [], []
        for c in ids:
            m = cm == c  # (H, W)
            if mode == "semantic" or c == 0:
                ms.append(m)
                ls.append(c)
                continue
            lab, n = ndimage.label(m.cpu().numpy(), structure=_EIGHT)
            comp = torch.from_numpy(lab).to(cm.device)
            for k in range(1, n + 1):
                part = comp == k
                if int(part.sum()) >= min_area:
                    ms.append(part)
                    ls.append(c)
        h, w = cm.shape
        masks.append(torch.stack(ms).float() if ms else cm.new_zeros(0, h, w, dtype=torch.float))
        labels.append(torch.tensor(ls, dtype=torch.long, device=cm.device))
    return masks, labels


def detection_targets(class_mask: torch.Tensor, background: int = 0) -> list[dict[str, torch.Tensor]]:
    """COCO-style ground truth: every 8-connected component of every defect class (background and unknown
    pixels excluded), with boxes from the masks (:func:`common.metrics.boxes_from_masks`).

    Args:
        class_mask: ``(B, H, W)`` model ids.
        background: Model id of the background.

    Returns:
        Per image ``{"masks": (N, H, W) bool, "boxes": (N, 4) xyxy, "labels": (N,) int64}``.
    """
    out = []
    for cm in class_mask:
        parts = [instances_from_mask(cm == c, label=int(c)) for c in torch.unique(cm) if c >= 0 and c != background]
        h, w = cm.shape
        if parts:
            out.append({k: torch.cat([p[k] for p in parts]) for k in ("masks", "boxes", "labels")})
        else:
            out.append({"masks": torch.zeros(0, h, w, dtype=torch.bool, device=cm.device),
                        "boxes": torch.zeros(0, 4, device=cm.device),
                        "labels": torch.zeros(0, dtype=torch.long, device=cm.device)})
    return out
