"""Reading images and masks with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.data.errors import DataError
from common.data.masks import record_masks
from common.data.types import Sample, SampleRecord

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


IGNORED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini", "ehthumbs.db", "$recycle.bin"})
"""File and folder names (lower case) that operating systems and archivers leave behind: never data."""


def is_ignored(path: Path) -> bool:
    """Whether ``path``'s own name is hidden (``.name``) or a system file/folder (``__MACOSX``, ``Thumbs.db``,
    ``desktop.ini``...)."""
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Sorted image files of ``folder``, ignoring hidden and system files and folders (:func:`is_ignored`).

    Args:
        folder: The folder.
        recursive: Also walk its sub-folders (hidden and system folders such as ``.ipynb_checkpoints/`` and
            ``__MACOSX/`` are not entered).

    Returns:
        Image files (by extension, :data:`IMAGE_EXTENSIONS`), sorted by path.
    """
    found: list[Path] = []
    _collect_images(Path(folder), recursive, found, set())
    return sorted(found)


def _collect_images(folder: Path, recursive: bool, found: list[Path], seen: set[Path]) -> None:
    seen.add(folder.resolve())  # a symlinked folder pointing back up is walked once, not forever
    for p in folder.iterdir():
        if is_ignored(p):
            continue
        if p.is_file() and is_image_file(p):
            found.append(p)
        elif recursive and p.is_dir() and p.resolve() not in seen:
            _collect_images(p, True, found, seen)


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # forces decoding, so truncated files fail here and not in a worker later
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e}); the file is corrupt, truncated or not an image") from e
    return img


_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image(path: str | Path) -> np.ndarray:
    """Reads an image as ``(H, W, 3)`` uint8 RGB, whatever its mode (L, RGBA, I;16...).

    16-bit images (PIL modes ``I;16*``, and ``I``, which is how Pillow opens 16-bit PNGs) are scaled by their
    bit depth, ``round(value * 255 / 65535)``, the same for every image: absolute intensity is kept, so a dark
    image stays dark (no per-image min-max stretch, which would make a blank part look like a contrasted one).
    Data with fewer significant bits (a 12-bit camera saving 16-bit files) therefore looks darker than full
    range, identically at training and at prediction. Values outside ``[0, 65535]`` (32-bit ``I`` files) are
    clipped.

    Raises:
        DataError: The file is missing, truncated or not an image; the message names it.
    """
    img = _open(Path(path))
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_mask_array(path: str | Path) -> np.ndarray:
    """Reads a mask file as a 2-D array of its raw values (first channel for colour masks)."""
    img = _open(Path(path))
    arr = np.asarray(img.convert("L") if img.mode not in ("L", "P", "I", "I;16") else img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr


def load_sample(record: SampleRecord) -> Sample:
    """Loads the pixels of ``record``.

    Raises:
        DataError: Unreadable image or mask, or a mask whose size differs from its image (names both files
            and both sizes); see :func:`common.data.masks.record_masks`.
    """
    image = read_image(record.image_path)
    mask, class_mask = record_masks(record, image.shape[:2])
    is_anomalous = bool(record.is_anomalous) if record.is_anomalous is not None else bool(
        mask is not None and mask.any()
    )
    return Sample(
        image=image,
        mask=mask,
        is_anomalous=is_anomalous,
        defect_type=record.defect_type,
        object_name=record.object_name,
        caption=record.caption,
        path=str(record.image_path),
        class_mask=class_mask,
        mask_quality=record.mask_quality,
    )
