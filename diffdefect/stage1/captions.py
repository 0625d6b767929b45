"""Image-text manifests from labelled defect datasets, with the templated captions of
:mod:`common.data.captions` (stage 1's training pairs when a dataset has no text).

This module writes the manifest of one dataset. For many datasets at once, with unified defect names and
splits, use ``defectfm corpus`` (:mod:`common.data.corpus`), which writes the same lines.

Command line (also ``defectfm captions``)::

    python -m diffdefect.stage1.captions --reader mvtec --root data/demo --out data/demo_pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from common.data.corpus import manifest_entry
from common.data.readers import (
    BoxReader,
    ClassIdSegReader,
    FolderReader,
    KSDD2Reader,
    MagneticTileReader,
    ManifestReader,
    MVTecReader,
    Reader,
    VisAReader,
)
from common.data.types import SampleRecord

READERS: dict[str, type[Reader]] = {
    "mvtec": MVTecReader,
    "visa": VisAReader,
    "magnetic_tile": MagneticTileReader,
    "neu_seg": ClassIdSegReader,
    "class_id": ClassIdSegReader,
    "boxes": BoxReader,
    "ksdd2": KSDD2Reader,
    "folder": FolderReader,
    "manifest": ManifestReader,
}


def manifest_entries(records: Sequence[SampleRecord], base: Path | None = None) -> list[dict]:
    """Manifest lines (dicts) for ``records``; paths relative to ``base`` when given (absolute otherwise).

    One line per record, as :func:`common.data.corpus.manifest_entry` writes it (the corpus uses the same lines).
    """
    return [manifest_entry(rec, base) for rec in records]


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
