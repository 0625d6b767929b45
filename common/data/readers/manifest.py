"""Image-text manifests: JSON Lines, one object per line.

Keys: ``image`` (required; path relative to the manifest's folder or absolute), ``caption``, ``mask`` (optional
path), ``label`` (0/1 or ``good``/a defect type), ``defect_type``, ``object``, ``labels`` (list of defect-type
names present), ``split``. Example::

    {"image": "imgs/001.png", "caption": "a metal plate with a long scratch in the upper left", "mask": "masks/001.png", "defect_type": "scratch", "object": "plate"}
"""

from __future__ import annotations

import json
from pathlib import Path

from common.data.errors import DataError
from common.data.readers.base import Reader
from common.data.types import NORMAL, SampleRecord


def _label(entry: dict, where: str) -> tuple[bool | None, str]:
    dtype = entry.get("defect_type")
    labels = entry.get("labels")
    if labels is not None and not isinstance(labels, list):
        raise DataError(f"{where}: 'labels' must be a list of names, got {type(labels).__name__}")
    if dtype is None and labels:
        dtype = labels[0]
    label = entry.get("label")
    if label is None:
        if dtype is None:
            return None, NORMAL
        return dtype != NORMAL, dtype
    if isinstance(label, bool | int):
        anomalous = bool(label)
    elif isinstance(label, str):
        anomalous = label.lower() not in ("good", "ok", "normal", "0")
        if anomalous and dtype is None and label.lower() not in ("1", "ng", "anomaly", "defect"):
            dtype = label
    else:
        raise DataError(f"{where}: 'label' must be 0/1 or a name, got {label!r}")
    return anomalous, (dtype or "defect") if anomalous else NORMAL


class ManifestReader(Reader):
    """Reads an image-text JSONL manifest.

    Args:
        root: The manifest file (``.jsonl``).
        object_name: Object name for lines that give none.
        check_files: Check at listing time that every image and mask file exists.
    """

    layout = "image-text manifest"
    expected = "a .jsonl file, one JSON object per line with at least an 'image' key"

    def __init__(self, root: str | Path, object_name: str = "object", check_files: bool = True) -> None:
        super().__init__(root)
        self.object_name = object_name
        self.check_files = check_files

    def _list(self) -> list[SampleRecord]:
        if not self.root.is_file():
            raise self.layout_error(f"{self.root} is a folder: {self.found_entries()}")
        base = self.root.parent
        records = []
        with self.root.open() as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{self.root}:{lineno}"
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
                if not isinstance(entry, dict) or "image" not in entry:
                    raise DataError(f"{where}: each line must be a JSON object with an 'image' key")
                image = base / entry["image"]
                mask = base / entry["mask"] if entry.get("mask") else None
                if self.check_files:
                    for what, p in (("image", image), ("mask", mask)):
                        if p is not None and not p.is_file():
                            raise DataError(f"{where}: {what} {p} does not exist")
                anomalous, dtype = _label(entry, where)
                records.append(
                    SampleRecord(
                        image,
                        entry.get("object", self.object_name),
                        dtype,
                        anomalous,
                        mask_path=mask,
                        mask_threshold=int(entry.get("mask_threshold", 0)),
                        caption=entry.get("caption"),
                        split=entry.get("split"),
                        extra={"labels": tuple(entry.get("labels") or ())},
                    )
                )
        return records
