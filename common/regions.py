"""Connected defect regions of a mask: boxes, areas and plain-words locations.

Shared by explanations (CLIP-MDC), captions (diffdefect) and detection metrics (boxes from masks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    """One connected region.

    Attributes:
        box: ``(x0, y0, x1, y1)`` pixel box, inclusive-exclusive (COCO ``[x, y, w, h]`` is
            ``[x0, y0, x1 - x0, y1 - y0]``).
        area: Pixel count.
        area_fraction: ``area / (H * W)``.
        centroid: ``(x, y)`` in pixels.
        location: Plain-words position, e.g. ``"upper left"``, ``"center"``.
        score: Mean map value inside the region (1.0 for binary masks).
    """

    box: tuple[int, int, int, int]
    area: int
    area_fraction: float
    centroid: tuple[float, float]
    location: str
    score: float = 1.0

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def grid_cell(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    """``(row, col)`` of the 3x3 grid cell a point ``(x, y)`` falls in, each in 0..2."""
    return min(int(3 * y / max(height, 1)), 2), min(int(3 * x / max(width, 1)), 2)


def location_words(x: float, y: float, width: int, height: int) -> str:
    """Names the ninth of the image a point falls in: ``"upper left"`` ... ``"center"`` ... ``"lower right"``."""
    row, col = grid_cell(x, y, width, height)
    vertical = ("upper", "middle", "lower")[row]
    horizontal = ("left", "center", "right")[col]
    if vertical == "middle" and horizontal == "center":
        return "center"
    if vertical == "middle":
        return f"middle {horizontal}"
    if horizontal == "center":
        return f"{vertical} center"
    return f"{vertical} {horizontal}"


def find_regions(mask: np.ndarray, score_map: np.ndarray | None = None, min_area: int = 1) -> list[Region]:
    """Finds 8-connected regions of a binary mask, largest first.

    Args:
        mask: ``(H, W)`` bool or {0, 1} array.
        score_map: Optional ``(H, W)`` scores; each region gets its mean score.
        min_area: Regions smaller than this many pixels are dropped.

    Returns:
        Regions sorted by decreasing area.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    h, w = mask.shape
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    areas = ndimage.sum_labels(mask, labels, idx)
    centroids = ndimage.center_of_mass(mask, labels, idx)
    means = ndimage.mean(score_map, labels, idx) if score_map is not None else np.ones(n)
    regions = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if areas[i] < min_area:
            continue
        cy, cx = centroids[i]
        regions.append(
            Region(
                box=(int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)),
                area=int(areas[i]),
                area_fraction=float(areas[i]) / (h * w),
                centroid=(float(cx), float(cy)),
                location=location_words(cx, cy, w, h),
                score=float(means[i]),
            )
        )
    return sorted(regions, key=lambda r: -r.area)
