"""Images as they come: the three resize modes, tile grids with overlap blending, and the way back to the
original image's pixels.

* ``stretch``: the image is resized to the model input size whatever its aspect ratio (the historical mode);
* ``letterbox``: resized to fit inside the input size at its own aspect ratio and padded with zeros; the padding
  is never scored (its pixels are outside :attr:`~common.data.types.DefectBatch.content_box`);
* ``tile``: the image is kept at its native size (or scaled by ``tile_scale``) and cut into overlapping tiles of
  the input size; the tile maps are stitched back with a linear-ramp blending window (:class:`TileGrid`).

Every map a model returns is brought back to the original image by :func:`to_original` (crop to the content
box, resize to the file's size), so regions, boxes, areas and overlays are in the file's pixel coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

RESIZE_MODES = ("stretch", "letterbox", "tile")
"""How an image of any size and aspect ratio becomes model input (module docstring)."""


def check_resize(mode: str) -> str:
    """``mode`` if it is one of :data:`RESIZE_MODES`, else a one-line ``ValueError``."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    return mode


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of an ``int`` side or an ``[H, W]`` pair."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile start offsets along one axis: evenly spread, the first at 0 and the last ending at ``length``, with
    at least ``overlap`` (a fraction of ``tile``) between neighbours. One start (0) when the image is not longer
    than a tile (the tile is then padded)."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def ramp_window(tile: tuple[int, int], overlap: float) -> torch.Tensor:
    """``(th, tw)`` blending weights: 1 in the middle, falling linearly to a small positive value over the
    ``overlap`` border, so that overlapping tiles hand over smoothly and a pixel seen by one tile keeps its value."""
    out = []
    for n in tile:
        ramp = max(1.0, overlap * n)
        i = torch.arange(n, dtype=torch.float64) + 0.5
        out.append(torch.minimum(torch.ones(n, dtype=torch.float64), torch.minimum(i, n - i) / ramp))
    return (out[0][:, None] * out[1][None, :]).float()


@dataclass(frozen=True)
class TileSpec:
    """How evaluation images are tiled (carried by :attr:`~common.data.types.DefectBatch.tiling`).

    Attributes:
        size: ``(th, tw)`` tile size, the model input size.
        overlap: Overlap between neighbouring tiles, a fraction of the tile side.
        batch_size: Tiles per model call.
        scale: Working scale of the images relative to the file (1: native pixels).
    """

    size: tuple[int, int]
    overlap: float = 0.25
    batch_size: int = 8
    scale: float = 1.0

    def grid(self, height: int, width: int) -> TileGrid:
        """The grid covering a ``height`` x ``width`` image."""
        th, tw = self.size
        ys, xs = starts(height, th, self.overlap), starts(width, tw, self.overlap)
        return TileGrid(height, width, (th, tw), tuple((y, x) for y in ys for x in xs), self.overlap)


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles covering one image.

    Attributes:
        height: Image height (working scale).
        width: Image width.
        tile: ``(th, tw)``.
        positions: ``(y, x)`` top-left corner of every tile, row-major.
        overlap: The overlap fraction (sets the blending ramp).
    """

    height: int
    width: int
    tile: tuple[int, int]
    positions: tuple[tuple[int, int], ...]
    overlap: float = 0.25

    def __len__(self) -> int:
        return len(self.positions)

    def cut(self, image: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` -> ``(N, C, th, tw)`` tiles; an image smaller than a tile is zero-padded at the bottom
        and right (those pixels are cropped away again by :meth:`stitch`)."""
        th, tw = self.tile
        c, h, w = image.shape
        pad_h, pad_w = max(0, th - h), max(0, tw - w)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
        return torch.stack([image[:, y : y + th, x : x + tw] for y, x in self.positions])  # (N, C, th, tw)

    def stitch(self, tiles: torch.Tensor) -> torch.Tensor:
        """``(N, C, th, tw)`` tile maps -> ``(C, H, W)``: the blending-weighted mean of every tile covering a
        pixel. With one tile the map is returned as is (cropped to the image)."""
        th, tw = self.tile
        n, c = tiles.shape[:2]
        if n != len(self.positions):
            raise ValueError(f"stitch: {n} tiles for a grid of {len(self.positions)}")
        if n == 1:
            return tiles[0, :, : self.height, : self.width]
        weight = ramp_window(self.tile, self.overlap).to(tiles.device)  # (th, tw)
        h, w = max(self.height, th), max(self.width, tw)
        total = tiles.new_zeros(c, h, w, dtype=torch.float32)
        norm = tiles.new_zeros(1, h, w, dtype=torch.float32)
        for tile, (y, x) in zip(tiles, self.positions, strict=True):
            total[:, y : y + th, x : x + tw] += tile.float() * weight
            norm[:, y : y + th, x : x + tw] += weight
        return (total / norm)[:, : self.height, : self.width].to(tiles.dtype)


def run_tiles(fn: Callable[[torch.Tensor], Any], tiles: torch.Tensor, batch_size: int) -> list[Any]:
    """``fn`` applied to ``tiles`` in chunks of ``batch_size`` (``(n, C, th, tw)`` each); the list of results."""
    return [fn(tiles[i : i + batch_size]) for i in range(0, len(tiles), max(1, batch_size))]


# ---------------------------------------------------------------------------------------------- letterbox
def letterbox_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: where a ``height`` x ``width`` image lands inside ``size`` = ``(H, W)`` when it is
    scaled to fit at its own aspect ratio and centred (the rest is padding)."""
    th, tw = size
    s = min(th / height, tw / width)
    nh, nw = min(th, max(1, round(height * s))), min(tw, max(1, round(width * s)))
    y0, x0 = (th - nh) // 2, (tw - nw) // 2
    return x0, y0, x0 + nw, y0 + nh


def letterbox(arrays: Sequence[np.ndarray | None], size: tuple[int, int], masks_from: int = 1
              ) -> tuple[list[np.ndarray | None], tuple[int, int, int, int]]:
    """Letterboxes an image and its masks alike.

    Args:
        arrays: The image ``(h, w, 3)`` first, then masks ``(h, w)`` (``None`` entries pass through).
        size: ``(H, W)`` output size.
        masks_from: Arrays from this index on are masks (nearest-neighbour, padded with 0).

    Returns:
        The letterboxed arrays and the content box ``(x0, y0, x1, y1)``.
    """
    h, w = arrays[0].shape[:2]
    x0, y0, x1, y1 = letterbox_box(h, w, size)
    out: list[np.ndarray | None] = []
    for i, a in enumerate(arrays):
        if a is None:
            out.append(None)
            continue
        interp = cv2.INTER_NEAREST if i >= masks_from else cv2.INTER_AREA
        resized = cv2.resize(a, (x1 - x0, y1 - y0), interpolation=interp)
        canvas = np.zeros((size[0], size[1], *a.shape[2:]), dtype=a.dtype)
        canvas[y0:y1, x0:x1] = resized
        out.append(canvas)
    return out, (x0, y0, x1, y1)


def scale_arrays(arrays: Sequence[np.ndarray | None], scale: float, masks_from: int = 1) -> list[np.ndarray | None]:
    """Resizes an image and its masks by ``scale`` (1: unchanged; masks nearest-neighbour)."""
    if scale == 1.0:
        return list(arrays)
    h, w = arrays[0].shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return [None if a is None else cv2.resize(a, size, interpolation=cv2.INTER_NEAREST if i >= masks_from
                                              else (cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
            for i, a in enumerate(arrays)]


# ---------------------------------------------------------------------------------------------- way back
def crop_content(maps: torch.Tensor, box: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    """``(..., H, W)`` -> the pixels of the content box ``(x0, y0, x1, y1)`` (all of them when ``None``)."""
    if box is None:
        return maps
    x0, y0, x1, y1 = (int(v) for v in box)
    return maps[..., y0:y1, x0:x1]


def to_original(maps: torch.Tensor, box: Sequence[int] | torch.Tensor | None, size: Sequence[int] | torch.Tensor,
                mode: str = "bilinear") -> torch.Tensor:
    """``(C, h, w)`` maps of one image at the model's working resolution -> ``(C, H0, W0)`` in the original
    file's pixels: cropped to the content box (letterbox padding dropped), then resized to ``size`` = ``(H0, W0)``
    (``"bilinear"`` for scores, ``"nearest"`` for ids)."""
    out = crop_content(maps, box)
    h0, w0 = (int(v) for v in size)
    if tuple(out.shape[-2:]) == (h0, w0):
        return out
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(out[None].float(), size=(h0, w0), mode=mode, **kwargs)[0].to(maps.dtype)
