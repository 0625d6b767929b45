"""A record's mask as pixels: binary masks, class-id masks (with id remapping and ignored ids) and box masks.

The one place that turns what a :class:`~common.data.types.SampleRecord` says about its mask into a binary
defect mask and a class-id map; :func:`common.data.io.load_sample`, the readers that need the classes present in
a mask and the corpus builder all go through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.data.errors import DataError
from common.data.types import SampleRecord


def class_value_map(record: SampleRecord, max_value: int) -> np.ndarray:
    """Lookup table raw pixel value -> class index (0 = background, 1..K, -1 = unknown) for values
    ``0..max_value`` of a class-id mask of ``record`` (its ``class_ids``, default 1..K, and ``ignore_ids``)."""
    ids = record.class_ids or tuple(range(1, len(record.class_names) + 1))
    if len(ids) != len(record.class_names):
        raise DataError(f"{record.mask_path}: {len(ids)} class ids {list(ids)} for {len(record.class_names)} "
                        f"class names {list(record.class_names)}")
    lut = np.full(max(max_value, *ids, *record.ignore_ids, 0) + 1, -1, dtype=np.int64)
    lut[0] = 0
    for i, v in enumerate(ids, start=1):
        lut[v] = i
    for v in record.ignore_ids:
        lut[v] = 0
    return lut


def decode_class_ids(raw: np.ndarray, record: SampleRecord) -> np.ndarray:
    """``(H, W)`` raw class-id mask -> ``(H, W)`` int64 class indices 0..K (ignored ids are background).

    Raises:
        DataError: A pixel value that is neither background, a known class nor ignored (names the file, the
            values and the known classes).
    """
    raw = raw.astype(np.int64)
    if raw.min(initial=0) < 0:
        raise DataError(f"mask {record.mask_path} holds negative class ids")
    lut = class_value_map(record, int(raw.max(initial=0)))
    out = lut[raw]
    if (out < 0).any():
        bad = sorted(int(v) for v in np.unique(raw[out < 0]))
        known = ", ".join(f"{v}={n}" for v, n in zip(record.class_ids or range(1, len(record.class_names) + 1),
                                                     record.class_names, strict=True))
        ignored = f"; ignored: {list(record.ignore_ids)}" if record.ignore_ids else ""
        raise DataError(f"mask {record.mask_path} holds class id {', '.join(map(str, bad))} but only "
                        f"{len(record.class_names)} classes are known ({known}{ignored})")
    return out


def box_class_mask(boxes: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    """Filled boxes ``(x1, y1, x2, y2, k)`` -> ``(H, W)`` int64 class map (0 outside every box).

    Boxes are clipped to the image. Where boxes overlap, the smaller box wins (drawn last), so a small defect
    inside a large one stays visible; ties keep the listing order.
    """
    h, w = shape
    out = np.zeros((h, w), dtype=np.int64)
    order = sorted(range(len(boxes)), key=lambda i: -(boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
    for i in order:
        x1, y1, x2, y2, k = (int(v) for v in boxes[i])
        out[max(y1, 0) : min(y2, h), max(x1, 0) : min(x2, w)] = k
    return out


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image from its header (no decoding).

    Raises:
        DataError: Missing file or not an image.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e}); the file is corrupt, truncated or not an image") from e
    return h, w


def record_masks(record: SampleRecord, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The masks of ``record`` for an image of ``shape`` ``(H, W)``.

    Returns:
        ``(mask, class_mask)``: ``(H, W)`` uint8 binary defect mask {0, 1} and ``(H, W)`` int64 class indices
        0..K (``class_names[k - 1]``) for class-id and box masks, else ``None``; ``(None, None)`` without a mask.

    Raises:
        DataError: Unreadable mask, a mask whose size differs from its image (names both files and both
            sizes), or unknown class ids.
    """
    from common.data.io import read_mask_array  # io imports this module

    if record.mask_kind == "boxes":
        class_mask = box_class_mask(record.boxes, shape)
        return (class_mask > 0).astype(np.uint8), class_mask
    if record.mask_path is None:
        return None, None
    raw = read_mask_array(record.mask_path)
    if raw.shape[:2] != tuple(shape):
        ih, iw = shape
        mh, mw = raw.shape[:2]
        raise DataError(
            f"mask {record.mask_path} is {mw}x{mh} (WxH) but its image {record.image_path} is {iw}x{ih}; "
            "masks must have the size of their image"
        )
    if record.mask_kind == "class_id":
        class_mask = decode_class_ids(raw, record)
        return (class_mask > 0).astype(np.uint8), class_mask
    if record.mask_kind != "binary":
        raise DataError(f"{record.image_path}: unknown mask kind {record.mask_kind!r}; expected binary, class_id or boxes")
    return (raw > record.mask_threshold).astype(np.uint8), None
