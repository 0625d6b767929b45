"""The operator's review: predictions of predict runs (or of recent requests) and the labels CSV of corrections.

A *run* is a folder with ``predictions.jsonl`` as ``defectfm predict --out`` (or the server's request record,
one run per ``part-NNNN/``) writes it. :class:`ReviewStore` lists their predictions as review items (decision,
type, score, explanation, overlay file) and writes the operator's verdicts to a labels CSV in the
:class:`~common.data.readers.folder.FolderReader` format, so that ``lightning fit`` with
``--data.init_args.reader.init_args.labels_csv`` retrains on the corrected labels::

    image,label,defect_type,object,verdict,model_decision,model_type,score,run
    /data/line/IMG_1.png,good,,plate,wrong,flagged,scratch,0.91,runs/new_batch
    /data/line/IMG_2.png,dent,dent,plate,wrong,passed,good,0.12,runs/new_batch

``image`` is the image's absolute path (``FolderReader`` joins it to its ``root``, which leaves an absolute path
as it is), ``label`` is ``good`` or the defect type; the other columns say what the model said and what the
operator decided. One row per image: a later verdict replaces an earlier one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from common.data.readers.folder import NORMAL_NAMES
from common.data.types import NORMAL

COLUMNS = ("image", "label", "defect_type", "object", "verdict", "model_decision", "model_type", "score", "run")
VERDICTS = ("correct", "wrong")
TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def runs_of(folder: str | Path) -> list[Path]:
    """The predict runs of ``folder``: itself when it holds ``predictions*.jsonl``, else its sub-folders that do
    (the server's ``part-NNNN/``), oldest first."""
    folder = Path(folder)
    if any(folder.glob("predictions*.jsonl")):
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("predictions*.jsonl"))) \
        if folder.is_dir() else []


def _key(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()[:16]


def _score(record: dict[str, Any]) -> float:
    value = record.get("anomaly_score", record.get("probability"))
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class ReviewStore:
    """Review items of predict runs and the labels CSV the verdicts go to.

    Args:
        sources: Folders of predict runs (a ``defectfm predict --out`` folder, or the server's record folder).
        labels_csv: The labels CSV written (created on the first verdict).
    """

    def __init__(self, sources: list[str | Path], labels_csv: str | Path) -> None:
        self.sources = [Path(s) for s in sources]
        self.labels_csv = Path(labels_csv)
        self._lock = threading.Lock()
        self._files: dict[str, Path] = {}

    # ------------------------------------------------------------------ reading
    def items(self) -> list[dict[str, Any]]:
        """Every prediction of the runs, by decreasing score, with its current label (if reviewed)."""
        labels = self.labels()
        items: dict[str, dict[str, Any]] = {}
        for run in (r for s in self.sources for r in runs_of(s)):
            for jsonl in sorted(run.glob("predictions*.jsonl")):
                for line in jsonl.read_text().splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the server is writing this line right now: it shows on the next refresh
                    item = self._item(rec, run, labels)
                    items[item["key"]] = item  # a later prediction of the same image replaces the earlier
        return sorted(items.values(), key=lambda it: (-it["score"] if it["score"] == it["score"] else 1.0,
                                                      it["name"]))

    def _item(self, rec: dict[str, Any], run: Path, labels: dict[str, dict[str, str]]) -> dict[str, Any]:
        path = str(rec.get("path", ""))
        key = _key(path)
        if rec.get("overlay"):
            self._files[key] = run / rec["overlay"]
        flagged = bool(rec.get("is_anomalous"))
        return {"key": key, "path": path, "name": Path(path).name, "run": str(run),
                "object": rec.get("object", ""), "decision": "flagged" if flagged else "passed",
                "defect_type": rec.get("defect_type", "") if flagged else NORMAL, "score": _score(rec),
                "threshold": rec.get("image_threshold"), "explanation": rec.get("explanation", ""),
                "overlay": f"/review/overlay/{key}" if rec.get("overlay") else None,
                "label": labels.get(path, {}).get("label"), "verdict": labels.get(path, {}).get("verdict")}

    def overlay(self, key: str) -> Path | None:
        """The overlay file of an item (``None`` when unknown)."""
        if key not in self._files:
            self.items()
        return self._files.get(key)

    def labels(self) -> dict[str, dict[str, str]]:
        """The labels CSV's rows by image path (empty before the first verdict)."""
        if not self.labels_csv.is_file():
            return {}
        with self.labels_csv.open(newline="") as f:
            return {row["image"]: row for row in csv.DictReader(f)}

    def types(self) -> list[str]:
        """Defect types seen in the runs and the labels (for the page's type filter and suggestions)."""
        seen = {it["defect_type"] for it in self.items()} | {r["label"] for r in self.labels().values()}
        return sorted(t for t in seen if t and t != NORMAL)

    # ------------------------------------------------------------------ writing
    def mark(self, key: str, verdict: str, defect_type: str | None = None) -> dict[str, str]:
        """Records an operator's verdict on an item in the labels CSV.

        Args:
            key: The item's key.
            verdict: ``"correct"`` (the model's decision is the label) or ``"wrong"`` (``defect_type`` is:
                ``"good"`` for a false alarm, else the true defect type, which may be a new name).
            defect_type: The true class when ``verdict`` is ``"wrong"``.

        Returns:
            The CSV row written.

        Raises:
            KeyError: No item has this key.
            ValueError: An unknown verdict, a missing or malformed type name, or "wrong" with the model's own call.
        """
        item = next((it for it in self.items() if it["key"] == key), None)
        if item is None:
            raise KeyError(f"no prediction with key {key!r} in {', '.join(map(str, self.sources))}")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        model_label = item["defect_type"] if item["decision"] == "flagged" else NORMAL
        if verdict == "correct":
            label = model_label
        else:
            label = (defect_type or "").strip()
            if not TYPE_NAME.match(label):
                raise ValueError(f"'wrong' needs the true class: 'good' or a defect type name (letters, digits, "
                                 f"space, _ . -; at most 64), got {defect_type!r}")
            label = NORMAL if label.lower() in NORMAL_NAMES else label
            if label == model_label:
                raise ValueError(f"the model already said {label!r}: mark it 'correct'")
        row = {"image": item["path"], "label": label, "defect_type": "" if label == NORMAL else label,
               "object": item["object"], "verdict": verdict, "model_decision": item["decision"],
               "model_type": model_label, "score": f"{item['score']:.6g}", "run": item["run"]}
        with self._lock:
            rows = self.labels()
            rows[row["image"]] = row
            self.labels_csv.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.labels_csv.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows.values())
            os.replace(tmp, self.labels_csv)
        return row
