"""What a ``predict_step`` returns for one image, and the callback writing it to disk.

Models return a list of :class:`ImagePrediction` per batch; :class:`PredictionWriter` writes per image an
overlay PNG, the anomaly map (16-bit PNG), the class-id mask of semantic predictions (PNG) and one JSON line,
and at the end a contact sheet and a CSV summary.

A file that cannot be read never stops a prediction run: the predict dataset marks it failed
(:attr:`~common.data.types.DefectBatch.error`), the model's ``predict_step`` skips it through
:func:`predict_readable` (a :meth:`ImagePrediction.unreadable` placeholder keeps its place), and the writer lists
it with its reason in ``errors.csv``, counts it in the final line (``N images predicted, M failed (see
errors.csv)``) and the ``lightning``/``defectfm`` command exits with :data:`EXIT_SOME_FAILED`.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from common.data.errors import DataError
from common.data.io import read_image
from common.data.types import DefectBatch
from common.viz.overlay import contact_sheet, overlay

EXIT_SOME_FAILED = 3
"""Exit code of a prediction command that wrote every readable image but could not read some files (1 is a crash,
2 bad input that stopped the run)."""


@dataclass
class ImagePrediction:
    """One image's prediction, ready to write.

    Attributes:
        path: Source image path.
        image: ``(H, W, 3)`` uint8 image, in the original file's pixels (:func:`in_original_pixels`).
        anomaly_map: ``(H, W)`` float anomaly probabilities in [0, 1], in the original file's pixels.
        label: Short text drawn on the overlay, e.g. ``"scratch 0.97"``.
        record: The JSON line: object, defect type, probability, regions, explanation...
        threshold: Level at which the overlay contour is drawn.
        label_map: ``(H, W)`` integer class ids of a semantic prediction (indices into ``record["vocabulary"]``,
            0 = background), or ``None`` for models that give only an anomaly map.
        error: Why the file could not be read (one line naming it); ``None`` for a real prediction. The writer
            lists such entries in ``errors.csv`` instead of writing pictures.
        region_mask: ``(H, W)`` bool pixels of the reported regions, outlined on the overlay instead of the
            ``threshold`` level (all False for an image called normal), or ``None``.
    """

    path: str
    image: np.ndarray
    anomaly_map: np.ndarray
    label: str
    record: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.5
    label_map: np.ndarray | None = None
    region_mask: np.ndarray | None = None
    error: str | None = None

    @classmethod
    def unreadable(cls, path: str, reason: str) -> ImagePrediction:
        """The placeholder of a file that could not be read."""
        return cls(path, np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.float32), "unreadable", error=reason)


def predict_readable(
    batch: DefectBatch, predict: Callable[[DefectBatch], list[ImagePrediction]]
) -> list[ImagePrediction]:
    """Runs ``predict`` on the readable images of ``batch`` only; the others get
    :meth:`ImagePrediction.unreadable` placeholders. The result is in batch order.

    Args:
        batch: A predict batch, possibly with failed images (:attr:`~common.data.types.DefectBatch.failed`).
        predict: The model's prediction of a batch without failures (e.g. its own ``predict_step``).
    """
    bad = set(batch.failed)
    if not bad:
        return predict(batch)
    good = [i for i in range(len(batch)) if i not in bad]
    preds = iter(predict(batch.select(good)) if good else [])
    errors = batch.error or []
    return [ImagePrediction.unreadable(batch.path[i], errors[i]) if i in bad else next(preds) for i in range(len(batch))]


def in_original_pixels(batch: DefectBatch, maps: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of ``batch``, its pixels and its map in the original file's coordinates: ``(H0, W0, 3)`` uint8
    and ``(C, H0, W0)`` float32 (``maps`` ``(B, C, H, W)`` at the working resolution, cropped to each image's
    content box, i.e. without letterbox padding, and resized to its file size; :func:`common.data.tiling.to_original`).
    Regions, boxes and areas drawn from these maps are in the file's pixels."""
    from common.data.tiling import to_original

    out = []
    for i in range(len(batch)):
        box = batch.content_box[i] if batch.content_box is not None else None
        size = batch.orig_size[i] if batch.orig_size is not None else batch.image.shape[-2:]
        image = to_original(batch.image[i].detach().float().cpu(), box, size).clamp(0, 1)
        image = (image * 255).round().byte().permute(1, 2, 0).numpy()
        amap = to_original(maps[i].detach().float().cpu(), box, size).numpy()
        out.append((image, amap))
    return out


def failed_predictions(trainer: L.Trainer) -> int:
    """How many files the trainer's :class:`PredictionWriter` s could not read (0 without a writer)."""
    return sum(cb.failed for cb in trainer.callbacks if isinstance(cb, PredictionWriter))


def count_errors(output_dir: str | Path) -> int:
    """Rows of the ``errors*.csv`` files a :class:`PredictionWriter` left in ``output_dir`` (files it could not
    read), for commands that drive the writer themselves (``defectfm onnx-predict``)."""
    total = 0
    for path in Path(output_dir).glob("errors*.csv"):
        with path.open(newline="") as f:
            total += sum(1 for _ in csv.DictReader(f))
    return total


def _safe_stem(path: str, index: int) -> str:
    parts = Path(path).with_suffix("").parts[-3:]
    return f"{index:05d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts))


class PredictionWriter(BasePredictionWriter):
    """Writes :class:`ImagePrediction` s: overlays, maps, JSON lines, a contact sheet and a CSV summary.

    Output layout (``output_dir``): ``overlays/<n>_<name>.png``, ``maps/<n>_<name>.png`` (anomaly probability
    x 65535 as 16-bit grey), ``masks/<n>_<name>.png`` for semantic predictions (class ids as grey values, 8-bit,
    16-bit past 255 classes: the layout of class-id annotations such as NEU-Seg's), ``predictions.jsonl`` (one
    JSON object per image, naming its files), ``contact_sheet.png``, ``summary.csv``, and ``errors.csv``
    (``path,reason``, one row per file that could not be read; header only when all were read).

    Overlays are drawn on the original image file, at its own size and aspect ratio (the anomaly map, computed at
    the model's input size, is resized back to it; sides above ``overlay_max_side`` are scaled down), titled with
    the file name. The contact sheet shows the defective images first, then the normal ones, each group by
    decreasing anomaly score; each tile is labelled with the file name, the decision, the defect type and the
    score, framed red (defective) or green (normal).

    Args:
        output_dir: Folder to write into (created).
        contact_sheet_max: At most this many overlays go on the contact sheet (the first in the order above).
        csv_fields: Keys of each record copied into the CSV (missing keys stay empty).
        overlay_max_side: Longest overlay side in pixels (``None``: the original size).
    """

    def __init__(
        self,
        output_dir: str = "runs/predict",
        contact_sheet_max: int = 64,
        csv_fields: Sequence[str] = ("path", "object", "is_anomalous", "defect_type", "probability",
                                     "anomaly_score", "image_threshold", "threshold_mode", "num_regions",
                                     "area_percent", "explanation"),
        overlay_max_side: int | None = 1024,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.contact_sheet_max = contact_sheet_max
        self.csv_fields = list(csv_fields)
        self.overlay_max_side = overlay_max_side
        self._count = 0
        self._sheet: list[tuple[tuple[bool, float, int], np.ndarray, str, tuple[int, int, int] | None]] = []
        self._rows: list[dict[str, Any]] = []
        self._errors: list[tuple[str, str]] = []

    @property
    def predicted(self) -> int:
        """Images predicted and written in the last run."""
        return self._count

    @property
    def failed(self) -> int:
        """Files that could not be read in the last run (listed in ``errors.csv``)."""
        return len(self._errors)

    def _suffix(self, trainer: L.Trainer) -> str:
        return f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sub in ("overlays", "maps"):
            (self.output_dir / sub).mkdir(parents=True, exist_ok=True)
        self._jsonl = self.output_dir / f"predictions{self._suffix(trainer)}.jsonl"
        self._jsonl.write_text("")
        self._count, self._sheet, self._rows, self._errors = 0, [], [], []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        """Writes the files of one batch of :class:`ImagePrediction` s."""
        lines = []
        for pred in prediction:
            if pred.error is not None:  # unreadable: listed in errors.csv, nothing else to write
                self._errors.append((pred.path, pred.error))
                print(f"predict: skipped, listed in errors.csv: {pred.error}", file=sys.stderr, flush=True)
                continue
            stem = _safe_stem(pred.path, self._count)
            self._count += 1
            over = self._overlay(pred)
            Image.fromarray(over).save(self.output_dir / "overlays" / f"{stem}.png")
            amap = np.clip(np.asarray(pred.anomaly_map, dtype=np.float64), 0, 1)
            Image.fromarray((amap * 65535).round().astype(np.uint16)).save(self.output_dir / "maps" / f"{stem}.png")
            rec = {"path": pred.path, **pred.record, "overlay": f"overlays/{stem}.png", "map": f"maps/{stem}.png"}
            if pred.label_map is not None:
                ids = np.asarray(pred.label_map)
                (self.output_dir / "masks").mkdir(exist_ok=True)
                Image.fromarray(ids.astype(np.uint8 if ids.max(initial=0) < 256 else np.uint16)).save(
                    self.output_dir / "masks" / f"{stem}.png")
                rec["mask"] = f"masks/{stem}.png"
            lines.append(json.dumps(rec, default=float))
            self._rows.append(rec)
            self._add_tile(pred, over)
        with self._jsonl.open("a") as f:
            f.write("".join(line + "\n" for line in lines))

    # ------------------------------------------------------------------ pictures
    def _overlay(self, pred: ImagePrediction) -> np.ndarray:
        """The overlay on the original image file at its own aspect ratio (the model-size image when the file
        cannot be read again), titled with the file name."""
        try:
            base = read_image(pred.path)
        except (DataError, OSError, ValueError):
            base = pred.image
        h, w = base.shape[:2]
        if self.overlay_max_side is not None and max(h, w) > self.overlay_max_side:
            f = self.overlay_max_side / max(h, w)
            base = np.asarray(Image.fromarray(base).resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS))
        return overlay(base, pred.anomaly_map, pred.threshold, pred.label, region_mask=pred.region_mask,
                       title=Path(pred.path).name)

    def _add_tile(self, pred: ImagePrediction, over: np.ndarray, tile: int = 160) -> None:
        """Keeps a thumbnail for the contact sheet when it ranks among the first ``contact_sheet_max``
        (defective first, then by decreasing score)."""
        rec = pred.record
        anomalous = rec.get("is_anomalous")
        score = rec.get("anomaly_score", rec.get("probability"))
        score = float(score) if score is not None else float("nan")
        key = (bool(anomalous), score if score == score else -1.0, -self._count)  # NaN last; ties: file order
        if len(self._sheet) >= self.contact_sheet_max and key <= min(t[0] for t in self._sheet):
            return
        thumb = Image.fromarray(over)
        thumb.thumbnail((tile, tile))
        if anomalous is None:
            decision, color = pred.label, None
        elif anomalous:
            decision, color = f"DEFECT: {rec.get('defect_type', '')}", (235, 70, 60)
        else:
            decision, color = "normal", (90, 200, 90)
        threshold = rec.get("image_threshold")
        detail = f"score {score:.3f}"
        if threshold is not None and anomalous is not None:  # why this decision: score vs threshold
            detail += f" {'>=' if anomalous else '<'} {threshold:.3f}"
        self._sheet.append((key, np.asarray(thumb), f"{Path(pred.path).name}\n{decision}\n{detail}", color))
        if len(self._sheet) > self.contact_sheet_max:
            self._sheet.remove(min(self._sheet, key=lambda t: t[0]))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        suffix = self._suffix(trainer)
        if self._sheet:
            tiles = sorted(self._sheet, key=lambda t: t[0], reverse=True)
            sheet = contact_sheet([t[1] for t in tiles], [t[2] for t in tiles], colors=[t[3] for t in tiles])
            Image.fromarray(sheet).save(self.output_dir / f"contact_sheet{suffix}.png")
        with (self.output_dir / f"summary{suffix}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.csv_fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(self._rows)
        with (self.output_dir / f"errors{suffix}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "reason"])
            w.writerows(self._errors)
        failed = f"{self.failed} failed" + (f" (see errors{suffix}.csv)" if self.failed else "")
        if trainer.is_global_zero or self.failed:
            print(f"{self._count} images predicted, {failed} -> {self.output_dir} "
                  f"(overlays/, maps/, masks/ for semantic predictions, predictions.jsonl, contact_sheet.png, "
                  f"summary.csv, errors.csv)", flush=True)
