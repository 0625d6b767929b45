"""Regions (boxes, areas, locations), overlays, contact sheets and the prediction writer."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from common.prediction import ImagePrediction, PredictionWriter
from common.regions import find_regions, location_words
from common.viz import contact_sheet, heat_colormap, overlay


def test_regions_boxes_areas_locations() -> None:
    m = np.zeros((90, 90), bool)
    m[5:15, 6:26] = True  # 200 px, upper left
    m[70:80, 70:75] = True  # 50 px, lower right
    m[40, 40] = m[41, 41] = True  # diagonal neighbours: one region with 8-connectivity
    regions = find_regions(m)
    assert [r.area for r in regions] == [200, 50, 2]
    assert regions[0].box == (6, 5, 26, 15) and regions[0].location == "upper left"
    assert regions[1].box == (70, 70, 75, 80) and regions[1].location == "lower right"
    assert regions[2].location == "center"
    assert regions[0].area_fraction == pytest.approx(200 / 8100)
    assert find_regions(m, min_area=10)[-1].area == 50
    assert find_regions(np.zeros((4, 4))) == []
    score = np.zeros((90, 90))
    score[5:15, 6:26] = 0.8
    assert find_regions(m, score)[0].score == pytest.approx(0.8)


@pytest.mark.parametrize(("x", "y", "words"), [(0, 0, "upper left"), (50, 0, "upper center"), (99, 50, "middle right"),
                                              (10, 99, "lower left"), (50, 50, "center")])
def test_location_words(x: int, y: int, words: str) -> None:
    assert location_words(x, y, 100, 100) == words


def test_overlay_and_sheet() -> None:
    img = np.full((64, 64, 3), 100, np.uint8)
    amap = np.zeros((64, 64), np.float32)
    amap[20:40, 20:40] = 1.0
    out = overlay(img, amap, threshold=0.5, label="scratch 0.97")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[30, 30] != img[30, 30]).any()  # heat over the defect
    assert (out[20, 30] == 255).all()  # white contour on the region's edge
    hot, cold = heat_colormap(np.array([[1.0, 0.0]]))[0]
    assert hot[0] > 100 and hot[1:].max() == 0 and cold[2] > 100 and cold[:2].max() == 0  # red high, blue low
    sheet = contact_sheet([out] * 5, ["a"] * 5, columns=2, tile=32)
    assert sheet.shape == (3 * (32 + 14), 64, 3)


def test_prediction_writer(tmp_path: Path) -> None:
    writer = PredictionWriter(str(tmp_path / "pred"), contact_sheet_max=3)
    trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True)
    writer.on_predict_epoch_start(trainer, None)
    rng = np.random.default_rng(0)
    preds = [
        ImagePrediction(f"/data/obj/test/{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                        rng.random((32, 32)), f"label {i}", {"object": "obj", "defect_type": "scratch",
                                                              "probability": 0.5, "explanation": f"e{i}"})
        for i in range(4)
    ]
    writer.write_on_batch_end(trainer, None, preds[:2], None, None, 0)
    writer.write_on_batch_end(trainer, None, preds[2:], None, None, 1)
    writer.on_predict_epoch_end(trainer, None)
    out = tmp_path / "pred"
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["explanation"] for x in lines] == ["e0", "e1", "e2", "e3"]
    assert all((out / x["overlay"]).is_file() and (out / x["map"]).is_file() for x in lines)
    m = np.asarray(Image.open(out / lines[1]["map"]))
    assert np.allclose(m / 65535.0, preds[1].anomaly_map, atol=1e-4)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 and rows[3]["explanation"] == "e3"
    assert (out / "contact_sheet.png").is_file()


def test_overlays_keep_the_image_aspect_and_the_sheet_puts_defects_first(tmp_path: Path) -> None:
    """Overlays are drawn on the original file (its size and aspect ratio, named); the contact sheet shows the
    defective images first, by decreasing score, then the normal ones, framed red / green."""
    grey = {"a": 40, "b": 90, "c": 150, "d": 210}
    sizes = {"a": (100, 200), "b": (120, 60), "c": (80, 80), "d": (50, 150)}  # (H, W)
    decisions = {"a": (False, 0.4), "b": (True, 0.6), "c": (True, 0.9), "d": (False, 0.1)}
    preds = []
    for name, (h, w) in sizes.items():
        path = tmp_path / "in" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((h, w, 3), grey[name], np.uint8)).save(path)
        anomalous, score = decisions[name]
        region = np.zeros((32, 32), bool)
        region[8:16, 8:16] = anomalous
        preds.append(ImagePrediction(str(path), np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.float32),
                                     "label", {"is_anomalous": anomalous, "anomaly_score": score,
                                               "defect_type": "scratch" if anomalous else "good",
                                               "image_threshold": 0.5}, region_mask=region))
    writer = PredictionWriter(str(tmp_path / "pred"), contact_sheet_max=3)
    trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True)
    writer.on_predict_epoch_start(trainer, None)
    writer.write_on_batch_end(trainer, None, preds, None, None, 0)
    writer.on_predict_epoch_end(trainer, None)
    out = tmp_path / "pred"
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    for line, (h, w) in zip(lines, sizes.values(), strict=True):
        over = np.asarray(Image.open(out / line["overlay"]))
        assert over.shape == (h, w, 3)
    b = np.asarray(Image.open(out / lines[1]["overlay"]))
    assert (b[30:60, 15:30] == 255).all(axis=-1).any()  # the region (rows 8-16 of 32 -> 30-60 of 120) outlined
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    tile, band = 160, 2 + 12 * 3
    assert sheet.shape == (tile + band, 3 * tile, 3)  # 3 of 4 kept: the normal one with score 0.1 left out
    centers = [int(sheet[tile // 2, c * tile + tile // 2, 0]) for c in range(3)]
    order = ["c", "b", "a"]  # defective by decreasing score, then normal
    assert np.argsort(centers).tolist() == np.argsort([grey[n] for n in order]).tolist()
    frames = [tuple(sheet[tile // 2, c * tile]) for c in range(3)]
    assert frames[0][0] > 200 and frames[1][0] > 200 and frames[2][1] > 150 > frames[2][0]  # red, red, green
