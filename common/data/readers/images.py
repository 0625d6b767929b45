"""Unlabelled images to predict on: every image of some folders (recursively) and files, nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.data.errors import DataError
from common.data.io import IMAGE_EXTENSIONS, is_image_file, list_images
from common.data.readers.base import Reader
from common.data.types import NORMAL, SampleRecord


class ImageFilesReader(Reader):
    """Lists the images to predict on, unlabelled: a folder (every image in it and its sub-folders, hidden and
    system files such as ``.ipynb_checkpoints/``, ``__MACOSX/``, ``Thumbs.db`` ignored), image files, or both.

    Use it as a DataModule's ``predict_reader``::

        predict_reader:
          class_path: common.data.ImageFilesReader
          init_args: {root: /data/new_batch}

    Args:
        root: A folder or an image file; with ``files``, the folder they are relative to.
        files: Further folders or image files (relative to ``root`` or absolute).
        recursive: Walk sub-folders.
        object_name: Object name of every image; ``None``: the folder nearest to the image on its path that is one
            of ``object_names`` (e.g. ``plate`` for ``.../plate/test/000.png``), else ``"object"``.
        object_names: Object names to look for on the image paths (e.g. a model's objects).
        defect_free: Every image is a known defect-free sample (a folder of good images, e.g. a new line's
            normal memory); by default the images are unlabelled.

    Raises:
        DataError: An input is missing or not an image, or no image is found at all.
    """

    layout = "image files"
    expected = f"image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder or its sub-folders"

    def __init__(
        self,
        root: str | Path,
        files: Sequence[str] | None = None,
        recursive: bool = True,
        object_name: str | None = None,
        object_names: Sequence[str] | None = None,
        defect_free: bool = False,
    ) -> None:
        super().__init__(root)
        self.defect_free = defect_free
        self.files = [str(f) for f in files] if files else None
        self.recursive = recursive
        self.object_name = object_name
        self.object_names = list(object_names or [])

    @property
    def _label(self) -> bool | None:
        return False if self.defect_free else None  # is_anomalous: known good, or unknown

    def inputs(self) -> list[Path]:
        """The folders and files to list."""
        return [self.root / f for f in self.files] if self.files else [self.root]

    def _object(self, image: Path) -> str:
        if self.object_name:
            return self.object_name
        folders = image.resolve().parts[:-1]
        return next((p for p in reversed(folders) if p in self.object_names), "object")  # the nearest one

    def _list(self) -> list[SampleRecord]:
        records = []
        for item in self.inputs():
            if not item.exists():
                raise DataError(f"input {item} does not exist")
            if item.is_dir():
                images = list_images(item, recursive=self.recursive)
                if not images:
                    where = " or its sub-folders" if self.recursive else ""
                    raise DataError(f"{item}: no images in the folder{where} (looked for "
                                    f"{', '.join(IMAGE_EXTENSIONS)}; hidden and system files are ignored)")
                records += [SampleRecord(p, self._object(p), NORMAL, self._label) for p in images]
            elif is_image_file(item):
                records.append(SampleRecord(item, self._object(item), NORMAL, self._label))
            else:
                raise DataError(f"input {item} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return list({r.image_path.resolve(): r for r in records}.values())  # an image named twice is predicted once
