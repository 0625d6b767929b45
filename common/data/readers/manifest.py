"""Image-text manifests: JSON Lines, one object per line.

Keys: ``image`` (required; path relative to the manifest's folder or absolute), ``caption``, ``mask`` (optional
path), ``label`` (0/1 or ``good``/a defect type), ``defect_type``, ``object``, ``labels`` (list of defect-type
names present), ``split``. Example::

    {"image": "imgs/001.png", "caption": "a metal plate with a long scratch in the upper left", "mask": "masks/001.png", "defect_type": "scratch", "object": "plate"}

Masks other than binary ones (what ``defectfm corpus`` writes, see :mod:`common.data.corpus`):
``mask_threshold`` (binary masks: a pixel above it is a defect), ``mask_kind`` (``binary``, ``class_id`` or
``boxes``), ``class_names`` (names of classes 1..K), ``class_ids`` (pixel value of each class when not 1..K),
``ignore_ids`` (pixel values that are background), ``boxes`` (``[x1, y1, x2, y2, name]`` per box, ``x1 <= x < x2``;
``mask`` is then the annotation file, for reference, and may be absent), ``mask_quality`` (``pixel`` or ``box``).
``domain`` is kept in ``record.extra["domain"]``.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.data.errors import DataError
from common.data.readers.base import Reader
from common.data.types import MASK_KINDS, MASK_QUALITIES, NORMAL, SampleRecord


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


def _mask_fields(entry: dict, where: str) -> dict:
    """SampleRecord mask fields of a class-id or box mask line (empty for binary masks)."""
    kind = entry.get("mask_kind", "binary")
    quality = entry.get("mask_quality", "box" if kind == "boxes" else "pixel")
    if kind not in MASK_KINDS or quality not in MASK_QUALITIES:
        raise DataError(f"{where}: mask_kind must be one of {MASK_KINDS} and mask_quality one of {MASK_QUALITIES}, "
                        f"got {kind!r} / {quality!r}")
    if kind == "binary":
        return {"mask_quality": quality}
    names = entry.get("class_names")
    boxes = entry.get("boxes") or []
    try:
        if names is None and kind == "boxes":
            names = sorted({str(b[4]) for b in boxes})
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError("class_names must be a list of names")
        index = {n: i for i, n in enumerate(names, start=1)}
        fields = {"mask_kind": kind, "class_names": tuple(names), "mask_quality": quality,
                  "class_ids": tuple(int(i) for i in entry.get("class_ids") or ()),
                  "ignore_ids": tuple(int(i) for i in entry.get("ignore_ids") or ())}
        if kind == "boxes":
            fields["boxes"] = tuple((int(x1), int(y1), int(x2), int(y2), index[str(n)]) for x1, y1, x2, y2, n in boxes)
    except KeyError as e:
        raise DataError(f"{where}: box class {e.args[0]!r} is not in class_names {names}") from e
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: bad {kind} mask fields ({e}); expected class_names: [names], "
                        "class_ids/ignore_ids: [ints], boxes: [[x1, y1, x2, y2, name], ...]") from e
    return fields


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
                extra = {"labels": tuple(entry.get("labels") or ())}
                if "domain" in entry:
                    extra["domain"] = entry["domain"]
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
                        extra=extra,
                        **_mask_fields(entry, where),
                    )
                )
        return records
