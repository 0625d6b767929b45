"""The server's record of recent requests: each one a predict-run folder written by ``PredictionWriter``.

Every request's image is stored (``part-NNNN/images/``) and its prediction written by the same
:class:`~common.prediction.PredictionWriter` as ``defectfm predict``'s (``overlays/``, ``maps/``,
``predictions.jsonl``), so the response, the review page and the labels CSV all refer to real files, and a
part is a predict-run folder like any other. After ``part_size`` requests a part is closed (contact sheet,
``summary.csv``, ``errors.csv``) and a new one begins; only the last ``keep_parts`` are kept, so disk use and
memory stay bounded however long the server runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common.prediction import ImagePrediction, PredictionWriter
from common.serve.inputs import ImageRequest

PART_GLOB = "part-*"
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def image_suffix(data: bytes) -> str:
    """The file suffix of an image's bytes (from its format; ``.png`` when unknown)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return SUFFIXES.get(img.format or "", ".png")


class RequestRecorder(PredictionWriter):
    """Stores request images and writes their predictions, part by part.

    Args:
        root: The record folder (``part-NNNN/`` folders in it).
        part_size: Requests per part.
        keep_parts: Parts kept (older ones are deleted when a new one begins).
        overlay_max_side: Longest overlay side (as for ``defectfm predict``).
    """

    def __init__(self, root: str | Path, part_size: int = 500, keep_parts: int = 4,
                 overlay_max_side: int | None = 1024) -> None:
        self.root = Path(root)
        self.part_size, self.keep_parts = part_size, keep_parts
        self._fake_trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True)
        self.root.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name.split("-")[1]) for p in self.root.glob(PART_GLOB) if p.name.split("-")[1].isdigit()]
        self._part = max(numbers, default=-1)
        self._seq = 0
        super().__init__(output_dir=str(self.root), contact_sheet_max=16, overlay_max_side=overlay_max_side)
        self._new_part()

    @property
    def part_dir(self) -> Path:
        """The folder of the current part."""
        return self.output_dir

    def _new_part(self) -> None:
        if self._part >= 0 and (self.root / f"part-{self._part:04d}").is_dir() and self._seq:
            self.on_predict_epoch_end(self._fake_trainer, None)  # contact sheet, summary.csv, errors.csv
        self._part += 1
        self.output_dir = self.root / f"part-{self._part:04d}"
        (self.output_dir / "images").mkdir(parents=True, exist_ok=True)
        self.on_predict_epoch_start(self._fake_trainer, None)
        self._seq = 0
        parts = sorted(self.root.glob(PART_GLOB))
        for old in parts[: max(0, len(parts) - self.keep_parts)]:
            shutil.rmtree(old, ignore_errors=True)

    def store(self, request: ImageRequest) -> Path:
        """Writes a request's image into the current part; returns its path."""
        if self._seq >= self.part_size:
            self._new_part()
        self._seq += 1
        stem = Path(request.filename).stem or "image"
        path = self.output_dir / "images" / f"{self._part:04d}{self._seq:05d}_{stem}{image_suffix(request.data)}"
        path.write_bytes(request.data)
        return path

    def write(self, predictions: Sequence[ImagePrediction]) -> dict[str, dict[str, Any]]:
        """Writes predictions (overlay, map, JSON line); returns each JSON record by image path (the records of
        ``defectfm predict``'s ``predictions.jsonl``)."""
        first = len(self._rows)
        self.write_on_batch_end(self._fake_trainer, None, list(predictions), None, None, 0)
        return {row["path"]: row for row in self._rows[first:]}
