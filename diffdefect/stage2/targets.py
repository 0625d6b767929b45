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

Supervision (:func:`build_targets`, one function from a batch and the mode, as :mod:`clipmdc.regimes` is for
CLIP-MDC): ``"labels"`` (class masks -> mask and class targets over the training names), ``"captions"`` (the
paper's caption-only regime: class-agnostic defect masks; the nouns of each image's caption are the pseudo-labels
over the batch's nouns, plus the grounding words), ``"both"`` (labels and grounding words). Captions come from the
data (the DataModule's ``captions="templated"`` writes them where a dataset has none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from scipy import ndimage

from common.data.types import DefectBatch
from common.data.vocabulary import remap_ids
from common.metrics import instances_from_mask
from diffdefect.stage2.classifier import caption_nouns
from diffdefect.stage2.criterion import Grounding

SUPERVISION = ("labels", "captions", "both")
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


@dataclass
class Stage2Targets:
    """What one training step learns from (the images kept by the open-vocabulary filter).

    Attributes:
        image: ``(b, 3, H, W)`` kept images.
        masks: Per kept image ``(N, H, W)`` {0, 1} target masks.
        labels: Per kept image ``(N,)`` ids into ``names`` (-1: a target without a label).
        names: The classes of the logits, background first: the training names, or (caption-only) the batch's
            caption nouns.
        text: ``(len(names), D)`` their text embeddings.
        nouns: Per kept image the caption nouns (``None`` with label supervision).
        grounding: The grounding words, or ``None``.
    """

    image: torch.Tensor
    masks: list[torch.Tensor]
    labels: list[torch.Tensor]
    names: list[str]
    text: torch.Tensor
    nouns: list[list[str]] | None = None
    grounding: Grounding | None = None


def grounding_words(nouns: Sequence[Sequence[str]], embed: Callable[[list[str]], torch.Tensor]) -> Grounding | None:
    """The batch's caption words for the grounding loss: their embeddings, owners and the image-caption positives
    (same non-empty noun set), or ``None`` when no caption names anything."""
    words = [(b, n) for b, ns in enumerate(nouns) for n in ns]
    if not words:
        return None
    emb = embed([n for _, n in words])  # (W, D)
    owner = torch.tensor([b for b, _ in words], device=emb.device)
    sets = [frozenset(ns) for ns in nouns]
    positive = torch.tensor([[bool(a) and a == c for c in sets] for a in sets], device=emb.device)
    return Grounding(emb, owner, positive)


def build_targets(batch: DefectBatch, supervision: str, names: Sequence[str], embed: Callable[[list[str]], torch.Tensor],
                  mapping: torch.Tensor | None = None, lexicon: dict[str, str] | None = None,
                  mode: str = "semantic", novel: str = "drop") -> Stage2Targets | None:
    """The training targets of a batch under a supervision mode (module docstring).

    Args:
        batch: The batch (ids in the DataModule's vocabulary).
        supervision: ``"labels"``, ``"captions"`` or ``"both"``.
        names: The training names (background first).
        embed: Names -> ``(N, D)`` text embeddings (a lookup in embeddings computed once).
        mapping: Data id -> training id (:func:`common.data.vocabulary.id_mapping`), ``None`` for the same ids.
        lexicon: Caption phrase -> canonical name (:func:`~diffdefect.stage2.classifier.default_lexicon`).
        mode: ``"semantic"`` or ``"instance"`` target masks (:func:`set_targets`).
        novel: ``"drop"`` or ``"ignore"``: images showing non-training classes (:func:`base_only`).

    Returns:
        :class:`Stage2Targets`, or ``None`` when no image is left (all novel or without masks).
    """
    if supervision not in SUPERVISION:
        raise ValueError(f"supervision must be one of {SUPERVISION}, got {supervision!r}")
    cm = remap_ids(batch.class_mask, mapping)  # (B, H, W) training ids, -1 unknown / novel
    keep, _ = base_only(cm, novel)
    keep = keep & batch.has_mask.to(keep.device)  # images without masks carry no mask supervision
    if not keep.any():
        return None
    idx = keep.nonzero().squeeze(1).tolist()
    nouns = None
    if supervision != "labels":
        nouns = [caption_nouns(batch.caption[i], lexicon) for i in idx]
        missing = sum(batch.caption[i] is None and bool(batch.label[i]) for i in idx)
        if missing:
            rank_zero_warn(f"supervision={supervision!r}: {missing} defective training image(s) without a caption "
                           "name no class; set the DataModule's captions: templated", UserWarning)
    if supervision in ("labels", "both"):
        masks, labels = set_targets(cm[keep], mode)
        names = list(names)
    else:  # class-agnostic defect masks, pseudo-labelled with the caption's first noun
        names = [names[0]] + sorted({n for ns in nouns for n in ns})
        masks, labels = set_targets((batch.mask[keep, 0] > 0.5).long(), mode)
        labels = [torch.where(lab == 0, lab, torch.full_like(lab, names.index(ns[0]) if ns else -1))
                  for lab, ns in zip(labels, nouns, strict=True)]
    grounding = None if nouns is None else grounding_words(nouns, embed)
    return Stage2Targets(batch.image[keep], masks, labels, names, embed(names), nouns, grounding)
