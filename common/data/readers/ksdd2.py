"""KolektorSDD2 layout: ``train|test/<id>.png`` with ``<id>_GT.png`` masks (defective iff the mask is non-empty)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.errors import DataError
from common.data.io import list_images, read_mask_array
from common.data.readers.base import Reader
from common.data.types import NORMAL, SampleRecord


class KSDD2Reader(Reader):
    """Reads KolektorSDD2.

    The image label is read from the mask at listing time (KSDD2 states it nowhere else).

    Args:
        root: Folder holding ``train/`` and ``test/``.
        defect_type: Name given to defective samples (KSDD2 has one defect class).
        object_name: Object name for prompts and captions.
    """

    layout = "KSDD2"
    expected = "train/<id>.png and train/<id>_GT.png (same for test/)"

    def __init__(self, root: str | Path, defect_type: str = "defect", object_name: str = "electrical_commutator") -> None:
        super().__init__(root)
        self.defect_type = defect_type
        self.object_name = object_name

    def _list(self) -> list[SampleRecord]:
        splits = [s for s in ("train", "test") if (self.root / s).is_dir()]
        if not splits:
            raise self.layout_error(self.found_entries())
        records = []
        for split in splits:
            folder = self.root / split
            files = list_images(folder)
            images = [p for p in files if not p.stem.endswith("_GT")]
            if not images:
                raise DataError(f"{folder}: no images in split '{split}'")
            for img in images:
                gt = img.with_name(f"{img.stem}_GT{img.suffix}")
                if not gt.exists():
                    gt = img.with_name(f"{img.stem}_GT.png")
                if not gt.exists():
                    raise DataError(f"{img}: no ground-truth mask; expected {gt}")
                anomalous = bool(np.any(read_mask_array(gt) > 0))
                records.append(
                    SampleRecord(
                        img,
                        self.object_name,
                        self.defect_type if anomalous else NORMAL,
                        anomalous,
                        mask_path=gt,
                        mask_threshold=0,
                        split=split,
                    )
                )
        return records
