"""Fixtures for the metric tests: random anomaly maps with several ground-truth blobs per map."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=int)


def make_blob_maps(
    seed: int, n: int = 6, size: int = 40, quantize: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(maps (n, size, size) float32 in [0, 1), masks (n, size, size) bool)`` with several blobs per map.

    Masks: thresholded smoothed noise (irregular blobs, several per map); the first map is defect-free.
    Scores: blurred mask + noise, optionally quantized to ``quantize`` levels (ties).
    """
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), sigma=(0, 2.0, 2.0))
    masks = noise > np.quantile(noise, 0.88)
    masks[0] = False
    blur = ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 1.5, 1.5))
    maps = 0.6 * blur + 0.4 * rng.random((n, size, size))
    maps = maps / maps.max() * 0.999
    if quantize:
        maps = np.floor(maps * quantize) / quantize
    return maps.astype(np.float32), masks


def count_components(masks: np.ndarray) -> list[int]:
    return [int(ndimage.label(m, EIGHT)[1]) for m in masks]


@pytest.fixture
def blob_maps():
    return make_blob_maps
