"""Templated expert-style captions of labelled defect images.

IMDD-1M pairs each image with an expert-verified description of about 42 words (object, defect type,
location, severity, surface context). Public datasets have labels and masks but no text; this module writes
such descriptions from what the labels say, deterministically:

* object and surface context (a short phrase per known object, e.g. "brushed metal surface");
* defect type in inspection vocabulary ("scratch" -> "linear scratch", :data:`DEFECT_TERMS`);
* location from the mask centroid on a 3x3 grid ("upper left", "center", "lower right"...);
* size from the mask area fraction (tiny < 0.5% <= small < 2% <= medium < 8% <= large < 20% <= extensive)
  and severity from it (minor / moderate / severe);
* a template chosen by a stable hash of the image path, so the same dataset always gives the same text.

The nouns (object and defect type) are stored as ``nouns`` for stage-2 grounding. Used by the image-text
manifests of stage 1 (:mod:`diffdefect.stage1.captions`), by the corpus builder, by the DataModule for samples
without a caption (``captions="templated"``) and by stage 2's class phrases. Examples (demo data)::

    A close-up inspection image of a plate, a brushed metal surface with fine parallel streaks. A small linear
    scratch is visible in the upper left region, covering about 1.2% of the area; the defect is moderate and
    clearly breaks the regular surface texture.

    A close-up inspection image of a fabric, a woven textile surface with a regular weave pattern. The surface
    is uniform and free of defects: no scratches, holes, stains or deformations are visible, and the texture is
    consistent across the whole field of view.

The templates live in ``common`` (not in a model package) because they describe data, not a model: the
corpus builder (:mod:`common.data.corpus`) writes them, and ``common`` never imports a model family. The
``defectfm captions`` command (:mod:`diffdefect.stage1.captions`) writes single-dataset manifests with them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.types import NORMAL, SampleRecord
from common.data.vocabulary import readable
from common.regions import grid_cell

SURFACES: dict[str, str] = {
    # demo data
    "plate": "a brushed metal surface with fine parallel streaks",
    "fabric": "a woven textile surface with a regular weave pattern",
    "wood": "a wood surface with curved growth rings",
    # MVTec AD
    "bottle": "a glass bottle seen from above with a reflective rim",
    "cable": "a three-core cable cross-section with coloured insulation",
    "capsule": "a glossy pharmaceutical capsule with printed lettering",
    "carpet": "a carpet surface with a dense fibre texture",
    "grid": "a metal grid with a regular mesh pattern",
    "hazelnut": "a hazelnut shell with a natural brown texture",
    "leather": "a leather surface with a fine grain",
    "metal_nut": "a machined metal nut with flat faces",
    "pill": "a white pill with coloured speckles",
    "screw": "a threaded metal screw on a plain background",
    "tile": "a ceramic tile surface with a mottled pattern",
    "toothbrush": "a toothbrush head with dense bristles",
    "transistor": "a through-hole transistor mounted on a board",
    "zipper": "a zipper with interlocking metal teeth",
    # VisA, magnetic tile, NEU, KSDD2
    "candle": "a wax candle surface",
    "pcb1": "a printed circuit board with components and traces",
    "pcb2": "a printed circuit board with components and traces",
    "pcb3": "a printed circuit board with components and traces",
    "pcb4": "a printed circuit board with components and traces",
    "magnetic_tile": "a magnetic tile with a matte ceramic surface",
    "steel_strip": "a hot-rolled steel strip surface",
    "electrical_commutator": "an electrical commutator surface with polished segments",
    # CrackForest, masonry cracks, PV-Vision EL cells, DeepPCB
    "pavement": "an asphalt road surface with a coarse aggregate texture",
    "masonry_wall": "a brick and stone masonry wall with mortar joints",
    "solar_cell": "an electroluminescence image of a crystalline silicon solar cell with metal busbars",
    "pcb": "a binarised image of a bare printed circuit board with copper traces and pads",
}

DEFECT_TERMS: dict[str, str] = {
    "scratch": "linear scratch",
    "hole": "puncture hole",
    "stain": "discoloured stain",
    "crack": "crack",
    "blowhole": "blowhole",
    "break": "edge break",
    "fray": "frayed edge",
    "uneven": "uneven surface region",
    "inclusion": "inclusion",
    "patches": "surface patch",
    "scratches": "linear scratch",
    "contamination": "contamination",
    "color": "colour defect",
    "cut": "cut",
    "fold": "fold",
    "glue": "glue residue",
    "poke": "poke mark",
    "thread": "loose thread",
    "defect": "surface defect",
    # unified names of the corpus data sets (configs/corpus/names.yaml) that read badly as they are
    "patch": "surface patch",
    "dark_area": "dark inactive area",
    "spur": "copper spur",
}

LOCATIONS = (("upper left", "top center", "upper right"), ("left", "center", "right"), ("lower left", "bottom center", "lower right"))
_SIZES = ((0.005, "tiny", "minor"), (0.02, "small", "moderate"), (0.08, "medium-sized", "moderate"), (0.2, "large", "severe"), (1.01, "extensive", "severe"))

_OPENINGS = (
    "A close-up inspection image of a {obj}, {surface}.",
    "An industrial inspection photograph of a {obj}, showing {surface}.",
    "A high-resolution quality-control image of a {obj}, {surface}.",
)
_DEFECT_SENTENCES = (
    "A {size} {term} is visible in the {location} region, covering about {pct:.1f}% of the area; the defect is "
    "{severity} and clearly breaks the regular surface texture.",
    "In the {location} region there is a {size} {term} covering about {pct:.1f}% of the image, a {severity} flaw "
    "that interrupts the otherwise uniform surface and would fail visual inspection.",
    "The {location} part of the {obj} shows a {size} {term} over about {pct:.1f}% of the surface; its severity is "
    "{severity}, with a sharp contrast against the surrounding material.",
)
_NOMASK_SENTENCES = (
    "A {term} is visible on the surface; its exact extent is not annotated, and the flaw would fail visual "
    "inspection because it breaks the regular texture of the {obj}.",
)
_NORMAL_SENTENCES = (
    "The surface is uniform and free of defects: no scratches, holes, stains or deformations are visible, and "
    "the texture is consistent across the whole field of view.",
    "No defect is present; the {obj} shows a clean, consistent texture without scratches, cracks, holes or "
    "discolouration, and it passes visual inspection.",
)


@dataclass(frozen=True)
class Caption:
    """A generated caption.

    Attributes:
        text: The description.
        nouns: Grounding nouns (object, defect type) for stage 2.
        location: Grid location of the defect (``None`` for normal or unmasked samples).
        area_fraction: Defect area / image area (``None`` without a mask).
    """

    text: str
    nouns: tuple[str, ...]
    location: str | None
    area_fraction: float | None


def mask_location(mask: np.ndarray) -> str:
    """Grid cell (3x3) of the centroid of a binary ``(H, W)`` mask, e.g. ``"upper left"``."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    row, col = grid_cell(float(xs.mean()), float(ys.mean()), w, h)
    return LOCATIONS[row][col]


def size_and_severity(area_fraction: float) -> tuple[str, str]:
    """Size word and severity word for a defect covering ``area_fraction`` of the image."""
    for limit, size, severity in _SIZES:
        if area_fraction < limit:
            return size, severity
    return _SIZES[-1][1], _SIZES[-1][2]


def _pick(options: Sequence[str], key: str, salt: int) -> str:
    return options[zlib.crc32(f"{salt}:{key}".encode()) % len(options)]


def caption_for(record: SampleRecord, mask: np.ndarray | None = None) -> Caption:
    """The templated caption of one record.

    Args:
        record: The record (object, defect type, image path for the template choice).
        mask: ``(H, W)`` binary defect mask, or ``None``.

    Returns:
        :class:`Caption`.
    """
    obj = readable(record.object_name)
    surface = SURFACES.get(record.object_name, f"a {obj} surface")
    key = str(record.image_path.name if isinstance(record.image_path, Path) else record.image_path) + record.object_name
    opening = _pick(_OPENINGS, key, 0).format(obj=obj, surface=surface)
    anomalous = record.is_anomalous if record.is_anomalous is not None else bool(mask is not None and mask.any())
    if not anomalous or record.defect_type == NORMAL:
        body = _pick(_NORMAL_SENTENCES, key, 1).format(obj=obj)
        return Caption(f"{opening} {body}", (obj,), None, 0.0 if mask is not None else None)
    dtype = readable(record.defect_type)
    term = DEFECT_TERMS.get(record.defect_type.lower(), dtype)
    if mask is not None and mask.any():
        frac = float(mask.mean())
        size, severity = size_and_severity(frac)
        location = mask_location(mask)
        body = _pick(_DEFECT_SENTENCES, key, 2).format(
            size=size, term=term, location=location, pct=100 * frac, severity=severity, obj=obj
        )
        return Caption(f"{opening} {body}", (obj, dtype), location, frac)
    body = _pick(_NOMASK_SENTENCES, key, 3).format(term=term, obj=obj)
    return Caption(f"{opening} {body}", (obj, dtype), None, None)
