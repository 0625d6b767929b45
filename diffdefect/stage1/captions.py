"""Image-text manifests from labelled defect datasets, with the templated captions of
:mod:`common.data.captions` (stage 1's training pairs when a dataset has no text).

Command line (also ``defectfm captions``)::

    python -m diffdefect.stage1.captions --reader mvtec --root data/demo --out data/demo_pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.data.captions import caption_for
from common.data.io import read_mask_array
from common.data.readers import (
    ClassIdSegReader,
    FolderReader,
    KSDD2Reader,
    MagneticTileReader,
    ManifestReader,
    MVTecReader,
    Reader,
    VisAReader,
)
from common.data.types import NORMAL, SampleRecord

READERS: dict[str, type[Reader]] = {
    "mvtec": MVTecReader,
    "visa": VisAReader,
    "magnetic_tile": MagneticTileReader,
    "neu_seg": ClassIdSegReader,
    "class_id": ClassIdSegReader,
    "ksdd2": KSDD2Reader,
    "folder": FolderReader,
    "manifest": ManifestReader,
}


def _binary_mask(record: SampleRecord) -> np.ndarray | None:
    if record.mask_path is None:
        return None
    raw = read_mask_array(record.mask_path)
    if record.mask_kind == "class_id":
        return (raw > 0).astype(np.uint8)
    return (raw > record.mask_threshold).astype(np.uint8)


def manifest_entries(records: Sequence[SampleRecord], base: Path | None = None) -> list[dict]:
    """Manifest lines (dicts) for ``records``; paths relative to ``base`` when given."""

    def rel(p: Path) -> str:
        if base is None:
            return str(Path(p).resolve())
        return os.path.relpath(Path(p).resolve(), base.resolve())

    entries = []
    for rec in records:
        mask = _binary_mask(rec)
        cap = caption_for(rec, mask)
        entry = {
            "image": rel(rec.image_path),
            "caption": cap.text,
            "object": rec.object_name,
            "defect_type": rec.defect_type,
            "label": 1 if (rec.is_anomalous and rec.defect_type != NORMAL) else 0,
            "nouns": list(cap.nouns),
        }
        if rec.mask_path is not None:
            entry["mask"] = rel(rec.mask_path)
            if rec.mask_kind == "binary":
                entry["mask_threshold"] = rec.mask_threshold
        if rec.split is not None:
            entry["split"] = rec.split
        if cap.location is not None:
            entry["location"] = cap.location
        entries.append(entry)
    return entries


def build_manifest(reader: Reader, out: str | os.PathLike, relative: bool = True) -> Path:
    """Writes the image-text manifest (JSONL) of every record of ``reader`` to ``out``.

    Args:
        reader: Any reader (MVTec, VisA, Magnetic Tile, class-id (NEU-Seg), folders...).
        out: The ``.jsonl`` file.
        relative: Store paths relative to the manifest's folder (portable) rather than absolute.

    Returns:
        ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = manifest_entries(reader.records(), out.parent if relative else None)
    out.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m diffdefect.stage1.captions --reader mvtec --root DIR --out pairs.jsonl``."""
    p = argparse.ArgumentParser(prog="defectfm captions", description=__doc__.split("\n\n")[0])
    p.add_argument("--reader", required=True, choices=sorted(READERS))
    p.add_argument("--root", required=True, help="dataset root (or file for 'manifest')")
    p.add_argument("--out", required=True, help="output .jsonl manifest")
    p.add_argument("--object-name", default=None, help="object name for readers that take one")
    p.add_argument("--absolute", action="store_true", help="store absolute paths")
    p.add_argument("--show", type=int, default=2, help="print this many example captions")
    a = p.parse_args(argv)
    cls = READERS[a.reader]
    kwargs = {"object_name": a.object_name} if a.object_name else {}
    path = build_manifest(cls(a.root, **kwargs), a.out, relative=not a.absolute)
    lines = path.read_text().splitlines()
    print(f"wrote {len(lines)} image-text pairs to {path}")
    for line in lines[:: max(1, len(lines) // max(1, a.show))][: a.show]:
        print("  " + json.loads(line)["caption"])


if __name__ == "__main__":
    main()
