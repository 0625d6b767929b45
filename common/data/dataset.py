"""Map-style dataset over reader records, and the collate function producing :class:`DefectBatch`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.captions import caption_for
from common.data.errors import DataError
from common.data.io import load_sample
from common.data.sampling import TileSampler, crop_tile, image_size_of
from common.data.tiling import TileSpec, check_resize, letterbox, pair, scale_arrays
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
        sample_ids: Per record, its :attr:`~common.data.types.DefectBatch.sample_id` (default: its index).
        resize: ``"stretch"`` (``transform`` resizes), ``"letterbox"`` or ``"tile"`` (done here, before
            ``transform``, which then only augments); see :mod:`common.data.tiling`.
        image_size: Model input ``(H, W)`` (letterbox size, tile size).
        tiles: In ``tile`` mode: a :class:`~common.data.sampling.TileSampler` (training: one random tile per item)
            or a :class:`~common.data.tiling.TileSpec` (evaluation: the whole image at the working scale, tiled
            by the model; or, with :meth:`grid_tiles`, every tile of it as an item).

    An item may be asked for as ``dataset[(index, seed)]`` (:class:`~common.data.sampling.SeededSampler`): the
    augmentation and the tile choice then follow ``seed`` only, whatever the worker that loads it.
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
        sample_ids: Sequence[int] | None = None,
        resize: str = "stretch",
        image_size: int | Sequence[int] | None = None,
        tiles: Any = None,
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
        self.sample_ids = list(range(len(self.records))) if sample_ids is None else [int(i) for i in sample_ids]
        self.resize = check_resize(resize)
        self.image_size = pair(image_size) if image_size is not None else None
        if resize != "stretch" and self.image_size is None:
            raise ValueError(f"resize={resize!r} needs image_size")
        self.tiles = tiles
        self._grid: list[tuple[int, int, int]] | None = None  # (record, y, x) per item of grid_tiles()
        self._cache: tuple[int, Sample] | None = None

    def grid_tiles(self) -> DefectDataset:
        """This dataset with one item per tile of every image (``tile`` mode with a :class:`TileSpec`): the
        whole grid of each image at the working scale, in order (image sizes are read from the file headers)."""
        if not isinstance(self.tiles, TileSpec):
            raise ValueError("grid_tiles needs resize='tile' and a TileSpec")
        grid = []
        for r, rec in enumerate(self.records):
            w, h = image_size_of(rec.image_path)
            h, w = max(1, round(h * self.tiles.scale)), max(1, round(w * self.tiles.scale))
            grid += [(r, y, x) for y, x in self.tiles.grid(h, w).positions]
        out = copy.copy(self)
        out._grid, out._cache = grid, None
        return out

    def __len__(self) -> int:
        return len(self.records) if self._grid is None else len(self._grid)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (index, None) if isinstance(index, int) else (int(index[0]), int(index[1]))
        position = None
        if self._grid is not None:
            r, y, x = self._grid[index]
            index, position = r, (y, x)
        rec = self.records[index]
        try:
            s = self._load(index, rec)
        except DataError as e:
            if self.on_error == "raise":
                raise
            return self._failed_item(index, str(e))
        item = self._item(rec, s, seed, position)
        item["index"] = index
        item["sample_id"] = self.sample_ids[index]
        return item

    def _load(self, index: int, rec: SampleRecord) -> Sample:
        if self._cache is not None and self._cache[0] == index:  # grid tiles of one image come in a row
            return self._cache[1]
        s = load_sample(rec)
        if self._grid is not None:
            self._cache = (index, s)
        return s

    def array_item(self, image: np.ndarray, path: str = "<array>", object_name: str | None = None) -> dict[str, Any]:
        """The item of an already-loaded ``(H, W, 3)`` uint8 RGB image (nothing is read from disk), made exactly
        as an unlabelled file's item (resize mode included), e.g. for a server that receives pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"{path}: expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        name = object_name or (self.object_names[0] if self.object_names else "object")
        rec = SampleRecord(Path(path), name, NORMAL, None)
        item = self._item(rec, Sample(np.ascontiguousarray(image), None, False, NORMAL, name, None, str(path)))
        item.update(index=0, sample_id=-1)
        return item

    def _failed_item(self, index: int, reason: str) -> dict[str, Any]:
        """A placeholder of the right size (the transform applied to a blank image) marked with ``reason``."""
        rec = self.records[index]
        blank = Sample(np.zeros((32, 32, 3), np.uint8), None, False, NORMAL, rec.object_name, None, str(rec.image_path))
        item = self._item(rec, blank)
        item.update(label=-1, has_mask=False, defect_type_id=-1, index=index, error=reason,
                    sample_id=self.sample_ids[index])
        return item

    def _item(self, rec: SampleRecord, s: Sample, seed: int | None = None,
              position: tuple[int, int] | None = None) -> dict[str, Any]:
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
        # masks travel as uint8 (class ids 1..254, 255 = unknown class) so that both take the same
        # nearest-neighbour path in OpenCV: int32/int64 maps are warped differently at sub-pixel edges
        labels = np.where(class_mask < 0, _UNKNOWN_U8, class_mask).astype(np.uint8)
        geometry = self._geometry(s.image, mask, labels, seed, position)
        image, mask, labels = geometry["arrays"]
        label, defect_type = int(s.is_anomalous), s.defect_type
        if geometry["tile"] and has_mask and not mask.any():  # a defect-free tile of a defective image
            label, type_id, defect_type = 0, self._type_ids[NORMAL], NORMAL
        if self.transform is not None:
            if seed is not None and hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(seed)  # per-sample: the same whatever the worker
            out = self.transform(image=image, mask=mask, class_mask=labels)
            image, mask, labels = out["image"], out["mask"], out["class_mask"]
        class_mask = labels.astype(np.int64)
        class_mask[class_mask == _UNKNOWN_U8] = -1
        caption = s.caption
        if caption is None and self.template_captions:
            caption = caption_for(replace(rec, is_anomalous=s.is_anomalous), np.asarray(mask) > 0.5).text
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).float()[None],
            "has_mask": has_mask,
            "label": label,
            "defect_type_id": type_id,
            "class_mask": torch.from_numpy(np.ascontiguousarray(class_mask)).long(),
            "object_id": self._obj_ids.get(s.object_name, -1),
            "defect_type": defect_type,
            "object_name": s.object_name,
            "caption": caption,
            "path": s.path,
            "error": None,
            "orig_size": (h, w),
            "content_box": geometry["box"],
            "tiling": self.tiles if isinstance(self.tiles, TileSpec) and self._grid is None else None,
        }

    def _geometry(self, image: np.ndarray, mask: np.ndarray, labels: np.ndarray, seed: int | None,
                  position: tuple[int, int] | None) -> dict[str, Any]:
        """The resize mode's geometry, before augmentation: ``arrays`` (image, mask, labels), the content ``box``
        (``None``: all pixels), whether the item is one ``tile`` of its image."""
        arrays = [image, mask, labels]
        if self.resize == "letterbox":
            arrays, box = letterbox(arrays, self.image_size)
            return {"arrays": arrays, "box": box, "tile": False}
        if self.resize != "tile":
            return {"arrays": arrays, "box": None, "tile": False}
        arrays = scale_arrays(arrays, getattr(self.tiles, "scale", 1.0))
        if position is not None:  # one tile of the grid
            return {"arrays": crop_tile(arrays, position, self.image_size), "box": None, "tile": True}
        if isinstance(self.tiles, TileSampler):  # training: one random tile
            rng = np.random.default_rng(seed)
            y, x = self.tiles.choose(arrays[1], self.image_size, rng)
            return {"arrays": crop_tile(arrays, (y, x), self.image_size), "box": None, "tile": True}
        return {"arrays": arrays, "box": None, "tile": False}  # evaluation: the whole image, tiled by the model


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
        sample_id=torch.tensor([int(it.get("sample_id", -1)) for it in items], dtype=torch.long),
        orig_size=torch.tensor([list(it.get("orig_size") or it["image"].shape[-2:]) for it in items], dtype=torch.long),
        content_box=_boxes(items),
        tiling=items[0].get("tiling"),
    )


def _boxes(items: list[dict[str, Any]]) -> torch.Tensor | None:
    """``(B, 4)`` content boxes, the whole image where an item has none; ``None`` when no item has one."""
    if not any(it.get("content_box") is not None for it in items):
        return None
    return torch.tensor([list(it.get("content_box") or (0, 0, it["image"].shape[-1], it["image"].shape[-2]))
                         for it in items], dtype=torch.long)
