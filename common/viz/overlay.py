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


def _fit_font(draw: ImageDraw.ImageDraw, text: str, size: int, width: int) -> ImageFont.ImageFont:
    """The default font at ``size`` px, shrunk (to 8 px at least) until ``text`` fits in ``width`` px."""
    while True:
        font = _font(size)
        if size <= 8 or draw.textlength(text, font=font) <= width - 6:
            return font
        size = max(8, int(size * 0.85))


def overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    threshold: float | None = 0.5,
    label: str | None = None,
    alpha: float = 0.45,
    contour_color: tuple[int, int, int] = (255, 255, 255),
    region_mask: np.ndarray | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Blends a heatmap of ``anomaly_map`` over ``image``, outlines the regions and writes a title and a label.

    The map and the region mask may have any size: they are resized to the image (bilinear / nearest), so an
    overlay can be drawn on the original image at its own size and aspect ratio.

    Args:
        image: ``(H, W, 3)`` uint8.
        anomaly_map: ``(h, w)`` anomaly probabilities in [0, 1].
        threshold: Contour level when no ``region_mask`` is given; ``None`` draws no contour.
        label: Text of the second line (e.g. ``"scratch 0.97"``).
        alpha: Heatmap opacity, scaled by the map value so normal areas stay readable.
        contour_color: RGB colour of the contour.
        region_mask: ``(h, w)`` bool regions to outline (e.g. the regions of the decision; all False: none),
            instead of the ``threshold`` level.
        title: Text of the first line (e.g. the file name).

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
    if region_mask is not None:
        region = np.asarray(region_mask, dtype=bool)
        if region.shape != (h, w):
            region = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    else:
        region = amap >= threshold if threshold is not None else None
    if region is not None and region.any():
        edge = region & ~ndimage.binary_erosion(region, iterations=max(1, min(h, w) // 128))
        out[edge] = contour_color
    lines = [t for t in (title, label) if t]
    if lines:
        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        y = 2
        for text in lines:
            font = _fit_font(draw, text, max(10, min(h, w) // 18), w)
            x0, y0, x1, y1 = draw.textbbox((3, y), text, font=font)
            draw.rectangle((x0 - 2, y0 - 1, x1 + 2, y1 + 1), fill=(0, 0, 0))
            draw.text((3, y), text, fill=(255, 255, 255), font=font)
            y = y1 + 3
        out = np.asarray(pil)
    return out


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[str] | None = None, columns: int = 8,
                  tile: int = 160, colors: Sequence[tuple[int, int, int] | None] | None = None) -> np.ndarray:
    """Arranges images in a grid of ``tile`` x ``tile`` cells with an optional caption under each.

    Args:
        images: ``(H, W, 3)`` uint8 images (any sizes; each is fitted into its cell, keeping its aspect ratio).
        captions: One caption per image; a newline separates lines (the band has room for the most lines).
        columns: Grid columns.
        tile: Cell side in pixels.
        colors: Per image, the RGB colour of its frame and of its caption's second line (its only line when it
            has one; ``None``: no frame, light grey text), e.g. red for defective and green for normal.

    Returns:
        ``(rows * (tile + caption band), columns * tile, 3)`` uint8 sheet; the band is 14 px for one line, 12 px
        more per further line.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    n_lines = max((len(c.split("\n")) for c in captions), default=1) if captions else 0
    band = 2 + 12 * n_lines if captions else 0
    cols = min(columns, len(images))
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * (tile + band)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font(10)
    grey = (230, 230, 230)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x0, y0 = c * tile, r * (tile + band)
        im = Image.fromarray(np.asarray(img)).copy()
        im.thumbnail((tile - 4, tile - 4))
        sheet.paste(im, (x0 + (tile - im.width) // 2, y0 + (tile - im.height) // 2))
        color = colors[i] if colors is not None else None
        if color is not None:
            draw.rectangle((x0, y0, x0 + tile - 1, y0 + tile + band - 1), outline=color, width=2)
        if captions:
            lines = captions[i].split("\n")
            for j, text in enumerate(lines):
                colored = color is not None and j == min(1, len(lines) - 1)
                draw.text((x0 + 3, y0 + tile + 12 * j), _shorten(text, tile // 6),
                          fill=color if colored else grey, font=font)
    return np.asarray(sheet)


def _shorten(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters with an ellipsis in the middle (file names keep their ends)."""
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (n - 1 - head):]
