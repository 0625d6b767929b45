"""Overlays (heatmap + contour + label) and contact sheets, in plain numpy/PIL (no plotting stack needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage


def heat_colormap(values: np.ndarray) -> np.ndarray:
    """Maps ``(H, W)`` values in [0, 1] to ``(H, W, 3)`` uint8 colours, blue (0) -> red (1), jet-like."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    threshold: float | None = 0.5,
    label: str | None = None,
    alpha: float = 0.45,
    contour_color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Blends a heatmap of ``anomaly_map`` over ``image``, outlines the thresholded region and writes a label.

    Args:
        image: ``(H, W, 3)`` uint8.
        anomaly_map: ``(H, W)`` anomaly probabilities in [0, 1] (resized to the image if needed).
        threshold: Contour level; ``None`` draws no contour.
        label: Text drawn in the top-left corner.
        alpha: Heatmap opacity, scaled by the map value so normal areas stay readable.
        contour_color: RGB colour of the contour.

    Returns:
        ``(H, W, 3)`` uint8 overlay.
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.shape != (h, w):
        amap = np.asarray(Image.fromarray(amap).resize((w, h), Image.BILINEAR))
    a = (alpha * (0.25 + 0.75 * np.clip(amap, 0, 1)))[..., None]
    out = (image.astype(np.float32) * (1 - a) + heat_colormap(amap).astype(np.float32) * a).astype(np.uint8)
    if threshold is not None:
        region = amap >= threshold
        edge = region & ~ndimage.binary_erosion(region, iterations=max(1, min(h, w) // 128))
        out[edge] = contour_color
    if label:
        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        font = _font(max(10, min(h, w) // 18))
        x0, y0, x1, y1 = draw.textbbox((3, 2), label, font=font)
        draw.rectangle((x0 - 2, y0 - 1, x1 + 2, y1 + 1), fill=(0, 0, 0))
        draw.text((3, 2), label, fill=(255, 255, 255), font=font)
        out = np.asarray(pil)
    return out


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[str] | None = None, columns: int = 8,
                  tile: int = 160) -> np.ndarray:
    """Arranges images in a grid of ``tile`` x ``tile`` cells with an optional caption under each.

    Args:
        images: ``(H, W, 3)`` uint8 images (any sizes; each is fitted into its cell).
        captions: One caption per image.
        columns: Grid columns.
        tile: Cell side in pixels.

    Returns:
        ``(rows * (tile + caption band), columns * tile, 3)`` uint8 sheet.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    band = 14 if captions else 0
    cols = min(columns, len(images))
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * (tile + band)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font(10)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        im = Image.fromarray(np.asarray(img)).copy()
        im.thumbnail((tile, tile))
        sheet.paste(im, (c * tile + (tile - im.width) // 2, r * (tile + band) + (tile - im.height) // 2))
        if captions:
            draw.text((c * tile + 2, r * (tile + band) + tile + 1), captions[i][: tile // 6], fill=(230, 230, 230),
                      font=font)
    return np.asarray(sheet)
