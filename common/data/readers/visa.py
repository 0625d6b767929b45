"""VisA layout: ``split_csv/1cls.csv`` (object, split, label, image, mask) plus the folders it points to."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from common.data.errors import DataError
from common.data.readers.base import Reader
from common.data.types import NORMAL, SampleRecord

_REQUIRED = ("object", "split", "label", "image")


class VisAReader(Reader):
    """Reads VisA through its ``split_csv/1cls.csv``.

    Anomalous rows get the defect type ``anomaly_type`` (VisA's 1cls split names no types); masks hold
    non-zero values on defects.

    Args:
        root: VisA root (holding ``split_csv/`` and one folder per object).
        objects: Object names to read; ``None`` reads all.
        split_csv: The split file, relative to ``root``.
        anomaly_type: Defect-type name given to anomalous images.
    """

    layout = "VisA"
    expected = "split_csv/1cls.csv with columns object,split,label,image,mask and the image/mask files it names"

    def __init__(
        self,
        root: str | Path,
        objects: Sequence[str] | None = None,
        split_csv: str = "split_csv/1cls.csv",
        anomaly_type: str = "anomaly",
    ) -> None:
        super().__init__(root)
        self.objects = set(objects) if objects is not None else None
        self.split_csv = split_csv
        self.anomaly_type = anomaly_type

    def _list(self) -> list[SampleRecord]:
        csv_path = self.root / self.split_csv
        if not csv_path.is_file():
            raise self.layout_error(f"no {self.split_csv}; root holds {self.found_entries()}")
        records = []
        with csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{csv_path}: missing columns {missing}; found {reader.fieldnames}")
            for lineno, row in enumerate(reader, start=2):
                if self.objects is not None and row["object"] not in self.objects:
                    continue
                label = row["label"].strip().lower()
                if label not in ("normal", "anomaly"):
                    raise DataError(f"{csv_path}:{lineno}: label must be 'normal' or 'anomaly', got {row['label']!r}")
                image = self.root / row["image"]
                if not image.is_file():
                    raise DataError(f"{csv_path}:{lineno}: image {image} does not exist")
                anomalous = label == "anomaly"
                mask = None
                if anomalous:
                    if not row.get("mask"):
                        raise DataError(f"{csv_path}:{lineno}: anomalous image {image} has no mask entry")
                    mask = self.root / row["mask"]
                    if not mask.is_file():
                        raise DataError(f"{csv_path}:{lineno}: mask {mask} does not exist")
                split = row["split"].strip().lower()
                records.append(
                    SampleRecord(
                        image,
                        row["object"],
                        self.anomaly_type if anomalous else NORMAL,
                        anomalous,
                        mask_path=mask,
                        mask_threshold=0,
                        split=split,
                    )
                )
        return records
