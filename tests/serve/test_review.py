"""The review page of the server: the predictions of a predict run sorted by score with their overlays, the
operator's verdicts written to a labels CSV in the FolderReader format, and ``lightning fit`` training on the
corrected labels; the recent requests reviewed the same way."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import requests
from PIL import Image

from common.cli import main
from common.data.datamodule import DefectDataModule
from common.data.readers.folder import FolderReader
from common.serve.review import ReviewStore
from tests.conftest import REPO
from tests.serve.conftest import QUIET, TINY

FOLDER = str(REPO / "configs" / "clipmdc" / "folder.yaml")


def items(url: str) -> list[dict]:
    return requests.get(url + "/review/items", timeout=30).json()["items"]


def mark(url: str, key: str, verdict: str, defect_type: str | None = None) -> requests.Response:
    return requests.post(url + "/review/label", json={"key": key, "verdict": verdict, "defect_type": defect_type},
                         timeout=30)


def test_review_page_shows_the_predict_run_sorted_by_score(clip_server, trained_clip) -> None:
    page = requests.get(clip_server.url + "/review", timeout=30)
    assert page.status_code == 200 and "<title>defectfm review</title>" in page.text and "/review/label" in page.text
    lines = [json.loads(x) for x in (trained_clip["run"] / "predictions.jsonl").read_text().splitlines()]
    got = items(clip_server.url)
    assert sorted(it["path"] for it in got) == sorted(x["path"] for x in lines)
    scores = [it["score"] for it in got]
    assert scores == sorted(scores, reverse=True)
    by_path = {x["path"]: x for x in lines}
    for it in got:
        line = by_path[it["path"]]
        assert it["decision"] == ("flagged" if line["is_anomalous"] else "passed")
        assert it["score"] == line["anomaly_score"] and it["explanation"] == line["explanation"]
        if line["is_anomalous"]:
            assert it["defect_type"] == line["defect_type"]
        png = requests.get(clip_server.url + it["overlay"], timeout=30)
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).format == "PNG"
    assert requests.get(clip_server.url + "/review/overlay/nope", timeout=30).status_code == 404


def test_verdicts_go_to_a_labels_csv_that_fit_trains_on(clip_server, trained_clip, tmp_path) -> None:
    got = items(clip_server.url)
    flagged = [it for it in got if it["decision"] == "flagged"]
    passed = [it for it in got if it["decision"] == "passed"]
    assert flagged, "the tiny model flags some of the plate's test images"
    expected = {}
    # the operator's corrections: a false alarm, a missed (or mistyped) defect of a new type, the rest confirmed
    r = mark(clip_server.url, flagged[0]["key"], "wrong", "good")
    assert r.status_code == 200, r.text
    expected[flagged[0]["path"]] = "good"
    other = passed[0] if passed else flagged[1]
    assert mark(clip_server.url, other["key"], "wrong", "dent").status_code == 200
    expected[other["path"]] = "dent"
    for it in got:
        if it["path"] not in expected:
            assert mark(clip_server.url, it["key"], "correct").status_code == 200
            expected[it["path"]] = it["defect_type"] if it["decision"] == "flagged" else "good"
    # bad verdicts: one line, nothing written
    assert mark(clip_server.url, got[0]["key"], "maybe").status_code == 400
    assert mark(clip_server.url, got[0]["key"], "wrong", "").status_code == 400
    assert mark(clip_server.url, got[0]["key"], "wrong", "a/b").status_code == 400
    assert mark(clip_server.url, "unknown", "correct").status_code == 404
    labels_csv = Path(requests.get(clip_server.url + "/review/items", timeout=30).json()["labels_csv"])
    with labels_csv.open(newline="") as f:
        rows = {row["image"]: row for row in csv.DictReader(f)}
    assert {p: r["label"] for p, r in rows.items()} == expected
    assert rows[flagged[0]["path"]]["model_decision"] == "flagged" and rows[flagged[0]["path"]]["verdict"] == "wrong"
    # the page shows the labels given
    assert {it["path"]: it["label"] for it in items(clip_server.url)} == expected
    # FolderReader reads the corrected labels ...
    reader = FolderReader(tmp_path, labels_csv=str(labels_csv), object_name="plate")
    records = {str(r.image_path): r for r in reader.records()}
    assert {p: r.defect_type for p, r in records.items()} == expected
    assert records[flagged[0]["path"]].is_anomalous is False and records[other["path"]].is_anomalous is True
    dm = DefectDataModule(reader, image_size=32, num_workers=0, split="random")
    assert "dent" in dm.vocabulary
    # ... and lightning fit trains on them (the folder config, the CSV given on the command line)
    assert main(["fit", "--config", FOLDER, "--config", TINY, *QUIET, "--trainer.fast_dev_run", "1",
                 "--data.init_args.reader.init_args.root", str(tmp_path),
                 "--data.init_args.reader.init_args.labels_csv", str(labels_csv),
                 "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0",
                 "--trainer.default_root_dir", str(tmp_path / "refit")]) == 0


def test_recent_requests_are_reviewable_and_labelled_like_a_predict_run(clip_server, trained_clip, tmp_path) -> None:
    image = sorted(trained_clip["images"].rglob("*.png"))[0]
    with image.open("rb") as f:
        sent = requests.post(clip_server.url + "/predict", files={"image": (image.name, f)}, data={"id": "recent"},
                             timeout=60).json()
    store = ReviewStore([clip_server.record_dir], tmp_path / "labels.csv")
    found = [it for it in store.items() if it["path"] == sent["path"]]
    assert len(found) == 1 and store.overlay(found[0]["key"]).is_file()
    assert found[0]["decision"] == ("flagged" if sent["is_anomalous"] else "passed")
    row = store.mark(found[0]["key"], "wrong", "good" if sent["is_anomalous"] else "crack")
    (record,) = FolderReader(tmp_path, labels_csv="labels.csv").records()
    assert str(record.image_path) == sent["path"] and record.defect_type == row["label"]
    assert Path(sent["path"]).read_bytes() == image.read_bytes()
