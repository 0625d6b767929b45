"""MVTec AD layout, also used by MPDD, BTAD-style sets and our generated demo data.

``<root>/<object>/train/good/*.png``, ``<root>/<object>/test/<defect_type>/*.png`` and
``<root>/<object>/ground_truth/<defect_type>/<stem>_mask.png``. ``root`` may also be a single object folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.data.errors import DataError
from common.data.io import list_images
from common.data.readers.base import Reader, require_images
from common.data.types import NORMAL, SampleRecord


class MVTecReader(Reader):
    """Reads the MVTec AD folder layout.

    Args:
        root: Dataset root (holding one folder per object) or a single object folder.
        objects: Object names to read; ``None`` reads all.
        mask_suffix: Suffix of mask file stems (``"_mask"`` in MVTec AD; BTAD uses ``""``).
    """

    layout = "MVTec AD"
    expected = "<object>/train/good/*.png, <object>/test/<defect_type>/*.png, <object>/ground_truth/<defect_type>/<name>_mask.png"

    def __init__(self, root: str | Path, objects: Sequence[str] | None = None, mask_suffix: str = "_mask") -> None:
        super().__init__(root)
        self.objects = list(objects) if objects is not None else None
        self.mask_suffix = mask_suffix

    def _object_dirs(self) -> list[Path]:
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return [self.root]
        dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and (p / "train").is_dir())
        if self.objects is not None:
            by_name = {d.name: d for d in dirs}
            missing = [o for o in self.objects if o not in by_name]
            if missing:
                raise DataError(f"{self.root}: objects {missing} not found; available: {sorted(by_name)}")
            dirs = [by_name[o] for o in self.objects]
        if not dirs:
            raise self.layout_error(self.found_entries())
        return dirs

    def _find_mask(self, obj_dir: Path, defect: str, image: Path) -> Path:
        gt_dir = obj_dir / "ground_truth" / defect
        for ext in (".png", image.suffix, ".bmp", ".tif"):
            cand = gt_dir / f"{image.stem}{self.mask_suffix}{ext}"
            if cand.exists():
                return cand
        raise DataError(f"{image}: defective test image has no mask; expected {gt_dir / (image.stem + self.mask_suffix + '.png')}")

    def _list(self) -> list[SampleRecord]:
        records: list[SampleRecord] = []
        for obj_dir in self._object_dirs():
            obj = obj_dir.name
            train_good = obj_dir / "train" / NORMAL
            if not train_good.is_dir():
                raise self.layout_error(f"no train/{NORMAL} folder in {obj_dir}: {self.found_entries(obj_dir / 'train')}")
            for img in require_images(train_good, list_images(train_good), f"class '{NORMAL}' of {obj}"):
                records.append(SampleRecord(img, obj, NORMAL, False, split="train"))
            test_dir = obj_dir / "test"
            if not test_dir.is_dir():
                raise self.layout_error(f"no test folder in {obj_dir}: {self.found_entries(obj_dir)}")
            for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
                defect = type_dir.name
                images = require_images(type_dir, list_images(type_dir), f"class '{defect}' of {obj}")
                for img in images:
                    if defect == NORMAL:
                        records.append(SampleRecord(img, obj, NORMAL, False, split="test"))
                    else:
                        mask = self._find_mask(obj_dir, defect, img)
                        records.append(SampleRecord(img, obj, defect, True, mask_path=mask, split="test"))
        return records
