"""A generic folder of images, for users' own OK/NG data.

Three ways to label, first match wins:

1. ``labels_csv`` with columns ``image`` (path relative to ``root``) and ``label`` (``0``/``1``/``ok``/``ng``/
   ``good``/``normal`` or a defect-type name), optional ``defect_type``, ``object``, ``mask``, ``caption``;
2. one sub-folder per class (``good``/``ok``/``normal`` for defect-free, any other name is a defect type);
3. flat images, labelled by their masks (non-empty mask = defective) or unlabelled when there are none.

Masks are looked up in ``mask_dir`` by image stem, with or without ``mask_suffix``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from common.data.errors import DataError
from common.data.io import list_images, read_mask_array
from common.data.readers.base import Reader, require_images
from common.data.types import NORMAL, SampleRecord

log = logging.getLogger(__name__)
NORMAL_NAMES = {"good", "ok", "normal", "0", "pass", "free"}
DEFECT_NAMES = {"ng", "1", "bad", "defect", "defective", "anomaly", "fail"}


class FolderReader(Reader):
    """Reads a generic image folder.

    Args:
        root: The folder.
        mask_dir: Folder of masks (relative to ``root`` or absolute); ``None`` for no masks.
        mask_suffix: Mask file stem suffix, e.g. ``"_mask"``.
        labels_csv: CSV of labels (relative to ``root`` or absolute).
        object_name: Object name when the CSV gives none.
        default_defect_type: Defect type of samples labelled only as defective.
        mask_threshold: A mask pixel above this value is a defect (0 suits 0/1 and 0/255 PNG masks; use 127
            for masks saved as JPEG).
        skip_unmasked: Flat layout only: leave out images that have no mask (e.g. unlabelled extras beside a
            labelled set) instead of listing them as unlabelled; a warning gives their number, and
            ``left_out`` lists them.
    """

    layout = "generic folder"
    expected = "images (flat or one sub-folder per class), optional masks folder, optional labels CSV"

    def __init__(
        self,
        root: str | Path,
        mask_dir: str | None = None,
        mask_suffix: str = "",
        labels_csv: str | None = None,
        object_name: str = "object",
        default_defect_type: str = "defect",
        mask_threshold: int = 0,
        skip_unmasked: bool = False,
    ) -> None:
        super().__init__(root)
        self.mask_dir = (self.root / mask_dir) if mask_dir else None
        self.mask_suffix = mask_suffix
        self.labels_csv = (self.root / labels_csv) if labels_csv else None
        self.object_name = object_name
        self.default_defect_type = default_defect_type
        self.mask_threshold = mask_threshold
        self.skip_unmasked = skip_unmasked
        self.left_out: list[Path] = []

    def _mask_for(self, image: Path, required: bool = False) -> Path | None:
        if self.mask_dir is None:
            return None
        for stem in (f"{image.stem}{self.mask_suffix}", image.stem):
            for ext in (".png", image.suffix, ".bmp"):
                cand = self.mask_dir / f"{stem}{ext}"
                if cand.exists():
                    return cand
        if required:
            raise DataError(f"{image}: no mask in {self.mask_dir}")
        return None

    def _parse_label(self, value: str, where: str) -> tuple[bool, str]:
        v = value.strip()
        if v.lower() in NORMAL_NAMES:
            return False, NORMAL
        if v.lower() in DEFECT_NAMES:
            return True, self.default_defect_type
        if not v:
            raise DataError(f"{where}: empty label")
        return True, v

    def _list(self) -> list[SampleRecord]:
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DataError(f"mask folder {self.mask_dir} does not exist")
        if self.labels_csv is not None:
            return self._from_csv()
        subdirs = sorted(p for p in self.root.iterdir() if p.is_dir() and (self.mask_dir is None or p != self.mask_dir))
        if subdirs and not list_images(self.root):
            return self._from_class_folders(subdirs)
        return self._from_flat()

    def _from_csv(self) -> list[SampleRecord]:
        path = self.labels_csv
        if not path.is_file():
            raise DataError(f"labels CSV {path} does not exist")
        records = []
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if "image" not in (reader.fieldnames or []) or "label" not in (reader.fieldnames or []):
                raise DataError(f"{path}: needs columns 'image' and 'label'; found {reader.fieldnames}")
            for lineno, row in enumerate(reader, start=2):
                where = f"{path}:{lineno}"
                image = self.root / row["image"]
                if not image.is_file():
                    raise DataError(f"{where}: image {image} does not exist")
                anomalous, dtype = self._parse_label(row["label"], where)
                dtype = row.get("defect_type") or dtype
                mask = (self.root / row["mask"]) if row.get("mask") else self._mask_for(image)
                if mask is not None and not mask.is_file():
                    raise DataError(f"{where}: mask {mask} does not exist")
                records.append(
                    SampleRecord(image, row.get("object") or self.object_name, dtype if anomalous else NORMAL,
                                 anomalous, mask_path=mask, mask_threshold=self.mask_threshold,
                             caption=row.get("caption") or None)
                )
        return records

    def _from_class_folders(self, subdirs: list[Path]) -> list[SampleRecord]:
        records = []
        for d in subdirs:
            anomalous, dtype = self._parse_label(d.name, str(d))
            for img in require_images(d, list_images(d), f"class '{d.name}'"):
                records.append(SampleRecord(img, self.object_name, dtype, anomalous, mask_path=self._mask_for(img),
                                            mask_threshold=self.mask_threshold))
        return records

    def _from_flat(self) -> list[SampleRecord]:
        records = []
        self.left_out = []
        for img in list_images(self.root):
            mask = self._mask_for(img)
            if mask is None and self.skip_unmasked and self.mask_dir is not None:
                self.left_out.append(img)
                continue
            if mask is None:
                records.append(SampleRecord(img, self.object_name, NORMAL, None))
                continue
            anomalous = bool((read_mask_array(mask) > self.mask_threshold).any())
            records.append(
                SampleRecord(img, self.object_name, self.default_defect_type if anomalous else NORMAL, anomalous,
                             mask_path=mask, mask_threshold=self.mask_threshold)
            )
        if self.left_out:
            log.warning("%s: %d images without a mask in %s left out (skip_unmasked)", self.root, len(self.left_out),
                        self.mask_dir)
        return records
