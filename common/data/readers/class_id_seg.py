"""Class-id segmentation folders: images beside masks whose pixel values are class ids.

The default layout is mmsegmentation's (NEU-Seg): ``img_dir/<split>/<name>.jpg``, ``ann_dir/<split>/<name>.png``
and a label list naming ids 1..K. Other layouts are configured, not coded: ``image_dir`` / ``mask_dir`` are
templates relative to the root with a ``{split}`` placeholder (e.g. ``{split}/img`` and ``{split}/ann`` for
PV-Vision's ``train/img``, ``train/ann``), ``split_names`` renames split folders (``testset: test``), and
``class_names`` may be an id -> name map with ``ignore_ids`` for pixel values that are structure, not defects
(a solar cell's busbars).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from common.data.errors import DataError
from common.data.io import list_images, read_mask_array
from common.data.masks import decode_class_ids
from common.data.readers.base import Reader
from common.data.types import NORMAL, SampleRecord

_SKIP_LABELS = {"__ignore__", "_background_", "background"}
SPLIT = "{split}"


class ClassIdSegReader(Reader):
    """Reads class-id segmentation folders.

    Each image's defect type is the class covering most pixels (all present classes are in
    ``record.extra["classes"]``); a mask with only background (and ignored ids) makes a normal sample.

    Args:
        root: Dataset root.
        class_names: Names of class ids 1..K (a list), or an id -> name map (``{1: dark_area, 3: crack}``);
            ``None`` reads them from ``labels_file`` (labelme style: ``__ignore__`` and ``_background_`` lines
            are skipped).
        labels_file: Label list, relative to ``root``.
        object_name: Object name for prompts and captions.
        splits: Split folders to read; ``None`` reads every folder that ``image_dir`` matches.
        image_dir: Image folder relative to ``root``; ``{split}`` stands for the split folder name (without
            it the images have no split).
        mask_dir: Mask folder relative to ``root``, same placeholder; a mask has its image's stem plus
            ``mask_suffix`` and ``mask_ext``.
        mask_suffix: Mask file stem suffix, e.g. ``"_label"``.
        mask_ext: Mask file extension.
        split_names: Split folder name -> split name recorded (``train``/``val``/``test``), e.g.
            ``{testset: test}``; unmapped folders keep their name.
        ignore_ids: Pixel values that are background, not a defect (e.g. ``[4]`` for busbars).
    """

    layout = "class-id segmentation"
    expected = "img_dir/<split>/*.jpg, ann_dir/<split>/*.png (class ids) and a label list"

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str] | Mapping[int, str] | None = None,
        labels_file: str = "labels.txt",
        object_name: str = "steel_strip",
        splits: Sequence[str] | None = None,
        image_dir: str = "img_dir/{split}",
        mask_dir: str = "ann_dir/{split}",
        mask_suffix: str = "",
        mask_ext: str = ".png",
        split_names: Mapping[str, str] | None = None,
        ignore_ids: Sequence[int] = (),
    ) -> None:
        super().__init__(root)
        self._class_ids: tuple[int, ...] = ()
        if isinstance(class_names, Mapping):
            items = sorted((int(k), str(v)) for k, v in class_names.items())
            if any(k <= 0 for k, _ in items):
                raise DataError(f"{self.root}: class ids must be > 0 (0 is background), got {[k for k, _ in items]}")
            self._class_ids = tuple(k for k, _ in items)
            class_names = [v for _, v in items]
        self._class_names = tuple(class_names) if class_names is not None else None
        self.labels_file = labels_file
        self.object_name = object_name
        self.splits = list(splits) if splits is not None else None
        self.image_dir, self.mask_dir = image_dir, mask_dir
        self.mask_suffix, self.mask_ext = mask_suffix, mask_ext
        self.split_names = dict(split_names or {})
        self.ignore_ids = tuple(int(i) for i in ignore_ids)
        if set(self.ignore_ids) & set(self._class_ids):
            raise DataError(f"{self.root}: ids {sorted(set(self.ignore_ids) & set(self._class_ids))} are both "
                            "classes and ignored")
        if image_dir != "img_dir/{split}" or mask_dir != "ann_dir/{split}":
            self.expected = f"{image_dir}/*.jpg with masks {mask_dir}/<stem>{mask_suffix}{mask_ext} (class ids)"

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes, in id order."""
        if self._class_names is None:
            path = self.root / self.labels_file
            if not path.is_file():
                raise DataError(f"{path}: label list not found; pass class_names or add the file")
            names = [ln.strip() for ln in path.read_text().splitlines()]
            self._class_names = tuple(n.lower() for n in names if n and n not in _SKIP_LABELS)
            if not self._class_names:
                raise DataError(f"{path}: no class names (only {sorted(_SKIP_LABELS)} entries)")
        return self._class_names

    def _split_folders(self) -> list[str | None]:
        if SPLIT not in self.image_dir:
            return [None]
        parent = self.root / self.image_dir.split(SPLIT)[0]
        if not parent.is_dir():
            raise self.layout_error(self.found_entries())
        found = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")
                       and (self.root / self.image_dir.format(split=p.name)).is_dir())
        if self.splits is None:
            if not found:
                raise self.layout_error(self.found_entries(parent))
            return found
        for split in self.splits:
            if split not in found:
                folder = self.root / self.image_dir.format(split=split)
                raise DataError(f"{folder}: split '{split}' not found; available: {found or self.found_entries(parent)}")
        return list(self.splits)

    def _list(self) -> list[SampleRecord]:
        names = self.class_names
        records = []
        for split in self._split_folders():
            folder = self.root / self.image_dir.format(split=split)
            masks = self.root / self.mask_dir.format(split=split)
            if not folder.is_dir() or not masks.is_dir():
                raise self.layout_error(f"{folder if not folder.is_dir() else masks} missing: {self.found_entries()}")
            images = list_images(folder)
            if not images:
                raise DataError(f"{folder}: split '{split}' has no images")
            for img in images:
                ann = masks / f"{img.stem}{self.mask_suffix}{self.mask_ext}"
                if not ann.exists():
                    raise DataError(f"{img}: no annotation; expected {ann}")
                rec = SampleRecord(img, self.object_name, NORMAL, False, mask_path=ann, mask_kind="class_id",
                                   class_names=names, class_ids=self._class_ids, ignore_ids=self.ignore_ids,
                                   split=self.split_names.get(split, split) if split is not None else None)
                ids, counts = np.unique(decode_class_ids(read_mask_array(ann), rec), return_counts=True)
                present = {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i > 0}
                dominant = names[max(present, key=present.get) - 1] if present else NORMAL
                records.append(dataclasses.replace(
                    rec, defect_type=dominant, is_anomalous=bool(present),
                    extra={"classes": tuple(names[i - 1] for i in sorted(present))},
                ))
        return records
