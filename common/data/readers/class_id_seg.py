"""Class-id segmentation folders (NEU-Seg, mmsegmentation style).

``img_dir/<split>/<name>.jpg``, ``ann_dir/<split>/<name>.png`` holding class ids (0 = background) and a label
list naming ids 1..K.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.data.errors import DataError
from common.data.io import list_images, read_mask_array
from common.data.readers.base import Reader
from common.data.types import NORMAL, SampleRecord

_SKIP_LABELS = {"__ignore__", "_background_", "background"}


class ClassIdSegReader(Reader):
    """Reads class-id segmentation folders.

    Each image's defect type is the class covering most pixels (all present classes are in
    ``record.extra["classes"]``); an all-background mask makes a normal sample.

    Args:
        root: Folder holding ``img_dir/`` and ``ann_dir/``.
        class_names: Names of class ids 1..K; ``None`` reads them from ``labels_file`` (labelme style:
            ``__ignore__`` and ``_background_`` lines are skipped).
        labels_file: Label list, relative to ``root``.
        object_name: Object name for prompts and captions.
        splits: Splits to read (sub-folders of ``img_dir``); ``None`` reads all.
    """

    layout = "class-id segmentation"
    expected = "img_dir/<split>/*.jpg, ann_dir/<split>/*.png (class ids) and a label list"

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str] | None = None,
        labels_file: str = "labels.txt",
        object_name: str = "steel_strip",
        splits: Sequence[str] | None = None,
    ) -> None:
        super().__init__(root)
        self._class_names = tuple(class_names) if class_names is not None else None
        self.labels_file = labels_file
        self.object_name = object_name
        self.splits = list(splits) if splits is not None else None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of class ids 1..K."""
        if self._class_names is None:
            path = self.root / self.labels_file
            if not path.is_file():
                raise DataError(f"{path}: label list not found; pass class_names or add the file")
            names = [ln.strip() for ln in path.read_text().splitlines()]
            self._class_names = tuple(n.lower() for n in names if n and n not in _SKIP_LABELS)
            if not self._class_names:
                raise DataError(f"{path}: no class names (only {sorted(_SKIP_LABELS)} entries)")
        return self._class_names

    def _list(self) -> list[SampleRecord]:
        img_root, ann_root = self.root / "img_dir", self.root / "ann_dir"
        if not img_root.is_dir() or not ann_root.is_dir():
            raise self.layout_error(self.found_entries())
        names = self.class_names
        splits = self.splits or sorted(p.name for p in img_root.iterdir() if p.is_dir())
        records = []
        for split in splits:
            folder = img_root / split
            if not folder.is_dir():
                raise DataError(f"{folder}: split '{split}' not found; available: {self.found_entries(img_root)}")
            images = list_images(folder)
            if not images:
                raise DataError(f"{folder}: split '{split}' has no images")
            for img in images:
                ann = ann_root / split / f"{img.stem}.png"
                if not ann.exists():
                    raise DataError(f"{img}: no annotation; expected {ann}")
                ids, counts = np.unique(read_mask_array(ann), return_counts=True)
                present = {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i > 0}
                if any(i > len(names) for i in present):
                    raise DataError(f"{ann}: class id {max(present)} beyond the {len(names)} known classes {names}")
                dominant = names[max(present, key=present.get) - 1] if present else NORMAL
                records.append(
                    SampleRecord(
                        img,
                        self.object_name,
                        dominant,
                        bool(present),
                        mask_path=ann,
                        mask_kind="class_id",
                        class_names=names,
                        split=split,
                        extra={"classes": tuple(names[i - 1] for i in sorted(present))},
                    )
                )
        return records
