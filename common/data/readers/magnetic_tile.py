"""Magnetic Tile layout: ``MT_<Class>/Imgs/<name>.jpg`` + same-name ``.png`` mask; ``MT_Free`` is normal."""

from __future__ import annotations

from pathlib import Path

from common.data.errors import DataError
from common.data.readers.base import Reader, require_images
from common.data.types import NORMAL, SampleRecord


class MagneticTileReader(Reader):
    """Reads the Magnetic Tile defect dataset (Huang et al.).

    Masks carry JPEG-like noise, so a pixel is a defect when its value is above 127. Defect-type names are
    the lower-cased class names (``blowhole``, ``break``, ``crack``, ``fray``, ``uneven``).

    Args:
        root: Folder holding the ``MT_*`` folders.
        object_name: Object name for prompts and captions.
    """

    layout = "Magnetic Tile"
    expected = "MT_<Class>/Imgs/<name>.jpg with <name>.png masks, MT_Free for defect-free tiles"

    def __init__(self, root: str | Path, object_name: str = "magnetic_tile") -> None:
        super().__init__(root)
        self.object_name = object_name

    def _list(self) -> list[SampleRecord]:
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("MT_"))
        if not class_dirs:
            raise self.layout_error(self.found_entries())
        records = []
        for cdir in class_dirs:
            imgs_dir = cdir / "Imgs"
            if not imgs_dir.is_dir():
                raise self.layout_error(f"{cdir} has no Imgs/ folder: {self.found_entries(cdir)}")
            name = cdir.name[3:].lower()
            normal = name == "free"
            images = sorted(p for p in imgs_dir.iterdir() if p.suffix.lower() == ".jpg")
            for img in require_images(imgs_dir, images, f"class '{name}'"):
                mask = img.with_suffix(".png")
                if not mask.exists():
                    raise DataError(f"{img}: no mask; expected {mask}")
                records.append(
                    SampleRecord(
                        img, self.object_name, NORMAL if normal else name, not normal, mask_path=mask, mask_threshold=127
                    )
                )
        return records
