"""Generated demo data: procedural textured surfaces with exact defect masks, in the MVTec AD layout.

Two or more objects (``plate``: brushed metal, ``fabric``: woven textile, ``wood``: wood grain) and three
visually distinct defect types (``scratch``: a thin bright or dark curve; ``hole``: a dark disc with a light
rim; ``stain``: a soft irregular discoloured blob). The mask marks exactly the pixels a defect changed.
Everything is deterministic from the seed, and a default set takes a few seconds to write.

Command line::

    defectfm-demo-data --out data/demo --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

OBJECTS = ("plate", "fabric", "wood")
DEFECTS = ("scratch", "hole", "stain")


# ----------------------------------------------------------------------------- surfaces
def _plate(rng: np.random.Generator, n: int) -> np.ndarray:
    streaks = ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), sigma=(0.6, 12.0))
    streaks = streaks / (np.abs(streaks).max() + 1e-8)
    yy, xx = np.mgrid[0:n, 0:n] / n
    shade = 0.55 + 0.12 * (xx - 0.5) + 0.08 * np.cos(3 * yy + rng.uniform(0, 6))
    g = np.clip(shade + 0.10 * streaks + rng.normal(0, 0.01, (n, n)), 0, 1)
    return np.stack([g * 0.97, g, g * 1.03], -1)


def _fabric(rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    period = rng.uniform(5.0, 7.0)
    phase = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(2 * np.pi * xx / period + phase[0])
    weft = np.sin(2 * np.pi * yy / period + phase[1])
    weave = 0.5 + 0.25 * np.where(((xx // period + yy // period) % 2) == 0, warp, weft)
    weave += ndimage.gaussian_filter(rng.normal(0, 0.05, (n, n)), 1.0)
    base = np.array([0.25, 0.38, 0.62]) + rng.uniform(-0.03, 0.03, 3)
    return np.clip(weave[..., None] * base * 1.6, 0, 1)


def _wood(rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    distort = ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), 8) * 6
    cx, cy = rng.uniform(-1.5, -0.5), rng.uniform(0.2, 0.8)
    r = np.sqrt((xx - cx) ** 2 * 0.15 + (yy - cy) ** 2) * rng.uniform(18, 24) + distort
    rings = 0.5 + 0.5 * np.sin(r)
    g = 0.45 + 0.18 * rings + ndimage.gaussian_filter(rng.normal(0, 0.03, (n, n)), (0.5, 3))
    return np.clip(g[..., None] * np.array([1.25, 0.85, 0.5]), 0, 1)


SURFACES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "plate": _plate,
    "fabric": _fabric,
    "wood": _wood,
}


# ----------------------------------------------------------------------------- defects
def _scratch(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = img.shape[0]
    canvas = Image.new("L", (n, n), 0)
    p0 = rng.uniform(0.15, 0.85, 2) * n
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.3, 0.6) * n
    bend = rng.uniform(-0.3, 0.3)
    t = np.linspace(-0.5, 0.5, 24)
    pts = [
        (p0[0] + length * s * np.cos(angle + bend * s), p0[1] + length * s * np.sin(angle + bend * s)) for s in t
    ]
    ImageDraw.Draw(canvas).line(pts, fill=255, width=int(rng.integers(2, max(3, n // 64) + 2)))
    mask = np.asarray(canvas) > 0
    value = 0.95 if rng.random() < 0.5 else 0.08
    out = img.copy()
    out[mask] = value
    return out, mask


def _hole(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = img.shape[0]
    r = rng.uniform(0.04, 0.09) * n
    c = rng.uniform(0.2, 0.8, 2) * n
    yy, xx = np.mgrid[0:n, 0:n]
    d = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2)
    mask = d <= r + 2.0
    out = img.copy()
    out[d <= r] = 0.03
    rim = mask & (d > r)
    out[rim] = np.clip(img[rim] + 0.35, 0, 1)
    return out, mask


def _stain(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = img.shape[0]
    c = rng.uniform(0.25, 0.75, 2) * n
    rad = rng.uniform(0.08, 0.16) * n
    yy, xx = np.mgrid[0:n, 0:n]
    blob = ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), n / 24)
    blob = blob / (np.abs(blob).max() + 1e-8)
    d = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / rad
    field = 1.0 - d + 0.5 * blob
    mask = field > 0
    alpha = np.clip(field * 3, 0, 0.75)[..., None]
    colour = np.array([0.45, 0.28, 0.08]) if rng.random() < 0.5 else np.array([0.15, 0.35, 0.12])
    out = img * (1 - alpha) + colour * alpha
    out[~mask] = img[~mask]
    return out, mask


DEFECT_FNS: dict[str, Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
}


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def make_defect(rng: np.random.Generator, surface: np.ndarray, defect: str) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``defect`` on a float ``(N, N, 3)`` surface; returns the uint8 image and the exact uint8 mask.

    The mask is exactly the set of pixels whose 8-bit value differs from the defect-free image.
    """
    for _ in range(20):
        out, mask = DEFECT_FNS[defect](rng, surface)
        clean, dirty = _to_u8(surface), _to_u8(out)
        changed = (clean != dirty).any(-1)
        if changed.sum() >= 0.5 * mask.sum() and changed.any():
            return dirty, changed.astype(np.uint8)
    raise RuntimeError(f"could not draw a visible {defect}")  # pragma: no cover - never seen with the defaults


def generate_demo_dataset(
    out: str | Path,
    seed: int = 0,
    objects: Sequence[str] = ("plate", "fabric"),
    defects: Sequence[str] = DEFECTS,
    image_size: int = 128,
    n_train_good: int = 40,
    n_test_good: int = 20,
    n_test_defect: int = 20,
    overwrite: bool = False,
) -> Path:
    """Writes the demo dataset in the MVTec AD layout.

    Args:
        out: Output root; ``<out>/<object>/{train/good,test/<type>,ground_truth/<type>}`` are written.
        seed: Seed; the same seed writes byte-identical files.
        objects: Objects, from ``plate``, ``fabric``, ``wood``.
        defects: Defect types, from ``scratch``, ``hole``, ``stain``.
        image_size: Image side in pixels.
        n_train_good: Defect-free training images per object.
        n_test_good: Defect-free test images per object.
        n_test_defect: Test images per object and defect type.
        overwrite: Write even if ``out`` already holds a dataset generated with other settings.

    Returns:
        The output root.
    """
    out = Path(out)
    for name, allowed in ((objects, SURFACES), (defects, DEFECT_FNS)):
        bad = [x for x in name if x not in allowed]
        if bad:
            raise ValueError(f"unknown demo names {bad}; choose from {sorted(allowed)}")
    stamp = f"seed={seed} objects={list(objects)} defects={list(defects)} size={image_size} counts={n_train_good},{n_test_good},{n_test_defect}\n"
    stamp_file = out / "DEMO_DATA.txt"
    if stamp_file.exists() and not overwrite:
        if stamp_file.read_text() == stamp:
            return out
        raise FileExistsError(f"{out} holds demo data made with other settings ({stamp_file.read_text().strip()}); "
                              "pass --overwrite or choose another folder")
    for oi, obj in enumerate(objects):
        rng = np.random.default_rng([seed, oi])
        surface_fn = SURFACES[obj]

        def save(img: np.ndarray, path: Path) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)

        for i in range(n_train_good):
            save(_to_u8(surface_fn(rng, image_size)), out / obj / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            save(_to_u8(surface_fn(rng, image_size)), out / obj / "test" / "good" / f"{i:03d}.png")
        for defect in defects:
            for i in range(n_test_defect):
                img, mask = make_defect(rng, surface_fn(rng, image_size), defect)
                save(img, out / obj / "test" / defect / f"{i:03d}.png")
                save(mask * 255, out / obj / "ground_truth" / defect / f"{i:03d}_mask.png")
    stamp_file.write_text(stamp)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: ``defectfm-demo-data --out DIR [--seed S] ...``."""
    p = argparse.ArgumentParser(prog="defectfm-demo-data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objects", nargs="+", default=["plate", "fabric"], choices=OBJECTS)
    p.add_argument("--defects", nargs="+", default=list(DEFECTS), choices=DEFECTS)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--n-train-good", type=int, default=40)
    p.add_argument("--n-test-good", type=int, default=20)
    p.add_argument("--n-test-defect", type=int, default=20)
    p.add_argument("--overwrite", action="store_true", help="rewrite an existing demo folder")
    a = p.parse_args(argv)
    root = generate_demo_dataset(a.out, a.seed, a.objects, a.defects, a.image_size, a.n_train_good, a.n_test_good,
                                 a.n_test_defect, a.overwrite)
    n = sum(1 for _ in root.rglob("*.png"))
    print(f"demo data: {n} PNG files under {root}")


if __name__ == "__main__":
    main()
