"""Map-style dataset over reader records, and the collate function producing :class:`DefectBatch`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.captions import caption_for
from common.data.errors import DataError
from common.data.io import load_sample
from common.data.types import NORMAL, DefectBatch, Sample, SampleRecord

_UNKNOWN_U8 = 255


class DefectDataset(Dataset):
    """Loads, transforms and tensorises records.

    Each item is a dict (so per-sample wrappers such as Perlin synthesis can edit it) with keys ``image``
    ``(3, H, W)`` float in [0, 1], ``mask`` ``(1, H, W)`` float {0, 1}, ``has_mask``, ``label``,
    ``defect_type_id``, ``class_mask`` ``(H, W)`` int64, ``object_id``, ``defect_type``, ``object_name``,
    ``caption``, ``path``, ``index``, ``error``.

    Normal samples without a mask file get an all-zero mask marked as known (``has_mask`` True): a defect-free
    image has no defect pixels. Defective samples without a mask get ``has_mask`` False.

    Args:
        records: The records to serve.
        vocabulary: Defect-type names; index 0 must be :data:`~common.data.types.NORMAL`. Types missing from
            it map to -1 (an unknown class, e.g. novel classes in an open-vocabulary test).
        object_names: Object names; unknown objects map to -1.
        transform: Joint albumentations transform taking ``image``, ``mask``, ``class_mask``.
        drop_masks: Serve no masks at all (weak supervision: image labels only).
        template_captions: Write a caption from the labels and the (transformed) mask where the dataset has none
            (:func:`common.data.captions.caption_for`).
        on_error: ``"raise"``: a file that cannot be read stops with its one-line
            :class:`~common.data.errors.DataError` (training, validation, test). ``"mark"`` (predict): the item
            becomes a placeholder (zero pixels, label unknown) whose ``error`` holds that line, so one bad file
            never stops a prediction run; models skip such items and the writer lists them in ``errors.csv``.
    """

    def __init__(
        self,
        records: Sequence[SampleRecord],
        vocabulary: Sequence[str],
        object_names: Sequence[str],
        transform: Callable[..., dict[str, Any]] | None = None,
        drop_masks: bool = False,
        template_captions: bool = False,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "mark"):
            raise ValueError(f"on_error must be 'raise' or 'mark', got {on_error!r}")
        if not vocabulary or vocabulary[0] != NORMAL:
            raise ValueError(f"vocabulary must start with {NORMAL!r}, got {list(vocabulary)[:3]}")
        self.records = list(records)
        self.vocabulary = list(vocabulary)
        self.object_names = list(object_names)
        if len(self.vocabulary) >= _UNKNOWN_U8:
            raise ValueError(f"at most {_UNKNOWN_U8 - 1} defect types are supported, got {len(self.vocabulary)}")
        self._type_ids = {n: i for i, n in enumerate(self.vocabulary)}
        self._obj_ids = {n: i for i, n in enumerate(self.object_names)}
        self.transform = transform
        self.drop_masks = drop_masks
        self.template_captions = template_captions
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        try:
            s = load_sample(rec)
        except DataError as e:
            if self.on_error == "raise":
                raise
            return self._failed_item(index, str(e))
        item = self._item(rec, s)
        item["index"] = index
        return item

    def _failed_item(self, index: int, reason: str) -> dict[str, Any]:
        """A placeholder of the right size (the transform applied to a blank image) marked with ``reason``."""
        rec = self.records[index]
        blank = Sample(np.zeros((32, 32, 3), np.uint8), None, False, NORMAL, rec.object_name, None, str(rec.image_path))
        item = self._item(rec, blank)
        item.update(label=-1, has_mask=False, defect_type_id=-1, index=index, error=reason)
        return item

    def _item(self, rec: SampleRecord, s: Sample) -> dict[str, Any]:
        h, w = s.image.shape[:2]
        has_mask = s.mask is not None or not s.is_anomalous
        mask = s.mask if s.mask is not None else np.zeros((h, w), np.uint8)
        type_id = self._type_ids.get(s.defect_type, -1)
        if s.class_mask is not None:
            # class ids of the file -> ids of our vocabulary (-1 for names outside it)
            lut = np.array([0] + [self._type_ids.get(n, -1) for n in rec.class_names], dtype=np.int64)
            class_mask = lut[s.class_mask]
        else:
            class_mask = mask.astype(np.int64) * type_id
        if self.drop_masks:
            has_mask = False
            mask = np.zeros_like(mask)
            class_mask = np.zeros_like(class_mask)
        image = s.image
        if self.transform is not None:
            # masks travel as uint8 (class ids 1..254, 255 = unknown class) so that both take the same
            # nearest-neighbour path in OpenCV: int32/int64 maps are warped differently at sub-pixel edges
            labels = np.where(class_mask < 0, _UNKNOWN_U8, class_mask).astype(np.uint8)
            out = self.transform(image=image, mask=mask, class_mask=labels)
            image, mask = out["image"], out["mask"]
            class_mask = out["class_mask"].astype(np.int64)
            class_mask[class_mask == _UNKNOWN_U8] = -1
        caption = s.caption
        if caption is None and self.template_captions:
            caption = caption_for(replace(rec, is_anomalous=s.is_anomalous), np.asarray(mask) > 0.5).text
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).float()[None],
            "has_mask": has_mask,
            "label": int(s.is_anomalous),
            "defect_type_id": type_id,
            "class_mask": torch.from_numpy(np.ascontiguousarray(class_mask)).long(),
            "object_id": self._obj_ids.get(s.object_name, -1),
            "defect_type": s.defect_type,
            "object_name": s.object_name,
            "caption": caption,
            "path": s.path,
            "error": None,
        }


def collate_samples(items: list[dict[str, Any]]) -> DefectBatch:
    """Stacks dataset items into one :class:`DefectBatch`."""
    return DefectBatch(
        image=torch.stack([it["image"] for it in items]),
        mask=torch.stack([it["mask"] for it in items]),
        has_mask=torch.tensor([bool(it["has_mask"]) for it in items]),
        label=torch.tensor([int(it["label"]) for it in items], dtype=torch.long),
        defect_type_id=torch.tensor([int(it["defect_type_id"]) for it in items], dtype=torch.long),
        class_mask=torch.stack([it["class_mask"] for it in items]),
        object_id=torch.tensor([int(it["object_id"]) for it in items], dtype=torch.long),
        defect_type=[it["defect_type"] for it in items],
        object_name=[it["object_name"] for it in items],
        caption=[it["caption"] for it in items],
        path=[it["path"] for it in items],
        error=[it.get("error") for it in items] if any(it.get("error") for it in items) else None,
    )
