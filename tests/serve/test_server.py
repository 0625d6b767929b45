"""``defectfm serve`` as a real server on a loopback port: the same JSON as ``defectfm predict``, both request forms,
per-request vocabulary and thresholds, 4xx for bad requests while it keeps serving, no lost or mixed responses
under concurrent batched load, ``/health`` and ``/info``."""

from __future__ import annotations

import base64
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from common.serve.backend import CheckpointModel
from common.serve.inputs import encode_json_request

ONLY_SERVE = {"id", "filename", "part", "path", "overlay", "map", "mask", "overlay_png"}  # file names


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def post_file(url: str, path: Path, **fields: Any) -> requests.Response:
    with path.open("rb") as f:
        return requests.post(url + "/predict", files={"image": (path.name, f)}, data=fields, timeout=60)


def same(a: Any, b: Any, tol: float = 1e-4) -> bool:
    """Equal JSON values, numbers within ``tol`` (a batch of another size moves float32 sums by ~1e-7)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, abs_tol=tol) or (a != a and b != b)
    return a == b


def test_response_is_the_json_line_of_defectfm_predict(clip_server, trained_clip) -> None:
    lines = [json.loads(x) for x in (trained_clip["run"] / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) >= 6
    for line in lines:
        r = post_file(clip_server.url, Path(line["path"]), object="plate", id=f"req-{line['path']}")
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["id"] == f"req-{line['path']}" and got["filename"] == Path(line["path"]).name
        assert same({k: v for k, v in got.items() if k not in ONLY_SERVE},
                    {k: v for k, v in line.items() if k not in ONLY_SERVE}), (got, line)
        stored = clip_server.record_dir / got["part"]
        assert Path(got["path"]).read_bytes() == Path(line["path"]).read_bytes()  # the image as sent
        assert (stored / got["overlay"]).is_file() and (stored / got["map"]).is_file()


def test_base64_json_request_with_overlay(clip_server, trained_clip) -> None:
    path = sorted(trained_clip["images"].rglob("*.png"))[0]
    body = encode_json_request(path.read_bytes(), id="b64", overlay=True, object="plate")
    r = requests.post(clip_server.url + "/predict", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["id"] == "b64" and {"is_anomalous", "defect_type", "anomaly_score", "explanation", "regions"} <= set(got)
    overlay = Image.open(io.BytesIO(base64.b64decode(got["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size[0] >= Image.open(path).size[0]  # drawn on the original image


def test_vocabulary_and_threshold_per_request_without_reloading(clip_server, trained_clip) -> None:
    path = sorted(trained_clip["images"].rglob("*.png"))[-1]
    default = post_file(clip_server.url, path).json()
    trained_types = list(default["type_probabilities"])
    opened = post_file(clip_server.url, path, defect_types="[good,scratch,dent]").json()
    assert list(opened["type_probabilities"]) == ["good", "scratch", "dent"]
    low = post_file(clip_server.url, path, image_threshold="0.0").json()
    high = post_file(clip_server.url, path, image_threshold="1.0").json()
    assert low["is_anomalous"] and not high["is_anomalous"] and low["threshold_mode"] == "given"
    again = post_file(clip_server.url, path).json()  # the request settings did not stay
    assert list(again["type_probabilities"]) == trained_types
    assert again["image_threshold"] == default["image_threshold"] and again["threshold_mode"] != "given"


@pytest.mark.parametrize("case", ["not_an_image", "truncated", "too_many_pixels", "too_many_bytes", "wrong_field",
                                  "bad_base64", "bad_json", "json_array", "wrong_content_type", "bad_threshold",
                                  "empty_vocabulary"])
def test_bad_request_gets_a_4xx_with_one_line_and_the_server_keeps_serving(clip_server, trained_clip, case) -> None:
    good = sorted(trained_clip["images"].rglob("*.png"))[0]
    data = good.read_bytes()
    url = clip_server.url + "/predict"
    rng = np.random.default_rng(0)
    send = {
        "not_an_image": lambda: requests.post(url, files={"image": ("a.png", b"this is text")}),
        "truncated": lambda: requests.post(url, files={"image": ("t.png", png(rng.integers(0, 255, (64, 64, 3),
                                                                                           np.uint8))[:900])}),
        "too_many_pixels": lambda: requests.post(url, files={"image": ("big.png", png(np.zeros((2100, 2100, 3),
                                                                                                np.uint8)))}),
        "too_many_bytes": lambda: requests.post(url, files={"image": ("huge.bin", b"\0" * 3_100_000)}),
        "wrong_field": lambda: requests.post(url, files={"picture": ("a.png", data)}),
        "bad_base64": lambda: requests.post(url, json={"image": "###"}),
        "bad_json": lambda: requests.post(url, data=b"{image:", headers={"Content-Type": "application/json"}),
        "json_array": lambda: requests.post(url, json=[1, 2]),
        "wrong_content_type": lambda: requests.post(url, data=data, headers={"Content-Type": "image/png"}),
        "bad_threshold": lambda: requests.post(url, files={"image": ("a.png", data)}, data={"image_threshold": "2"}),
        "empty_vocabulary": lambda: requests.post(url, files={"image": ("a.png", data)}, data={"defect_types": "[]"}),
    }[case]
    r = send()
    expected = {"too_many_pixels": 413, "too_many_bytes": 413, "wrong_content_type": 415}.get(case, 400)
    assert r.status_code == expected, r.text
    reason = r.json()["error"]
    assert reason and "\n" not in reason and "Traceback" not in reason
    ok = post_file(clip_server.url, good)
    assert ok.status_code == 200 and requests.get(clip_server.url + "/health", timeout=10).text == "ok"


def test_bad_request_in_a_batch_does_not_fail_the_others(clip_server, trained_clip) -> None:
    good = sorted(trained_clip["images"].rglob("*.png"))[0]

    def one(i: int) -> requests.Response:
        if i % 3 == 0:
            return requests.post(clip_server.url + "/predict", files={"image": ("x.png", b"nope")}, data={"id": str(i)})
        return post_file(clip_server.url, good, id=str(i))

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(24)))
    assert [r.status_code for r in results] == [400 if i % 3 == 0 else 200 for i in range(24)]
    assert all(r.json()["id"] == str(i) for i, r in enumerate(results) if i % 3)


def test_concurrent_requests_are_neither_lost_nor_mixed(clip_server, trained_clip, tmp_path) -> None:
    """300 distinct images from 16 clients: every response carries its own request's id, file name and the
    prediction of that very image (compared with the model run on it alone, in this process)."""
    rng = np.random.default_rng(7)
    files = []
    for i in range(300):
        img = rng.integers(20, 200, (48 + i % 17, 48, 3), dtype=np.uint8)
        y, x = rng.integers(0, 30, 2)
        img[y : y + 4 + i % 13, x : x + 5] = 255 - i % 50
        files.append(tmp_path / f"img_{i:03d}.png")
        Image.fromarray(img).save(files[-1])
    model = CheckpointModel(trained_clip["ckpt"])
    reference = {f.name: model.predict([(f, "object")], {})[0].record["anomaly_score"] for f in files}
    assert len({round(v, 4) for v in reference.values()}) > 50  # distinct images, distinct scores

    def one(i: int) -> tuple[int, dict]:
        r = post_file(clip_server.url, files[i], id=f"n{i}")
        return r.status_code, r.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(len(files))))
    assert all(code == 200 for code, _ in results)
    for i, (_, got) in enumerate(results):
        assert got["id"] == f"n{i}" and got["filename"] == files[i].name
        assert got["anomaly_score"] == pytest.approx(reference[files[i].name], abs=1e-4)


def test_health_and_info(clip_server, trained_clip) -> None:
    assert requests.get(clip_server.url + "/health", timeout=10).text == "ok"
    info = requests.get(clip_server.url + "/info", timeout=10).json()
    assert info["model"] == "clipmdc.module.CLIPMDCModule" and info["checkpoint"] == str(trained_clip["ckpt"])
    assert info["vocabulary"]["defect_types"][0] == "good" and len(info["vocabulary"]["defect_types"]) > 1
    assert 0.0 <= info["thresholds"]["image_threshold"] <= 1.0 and info["thresholds"]["threshold_mode"]
    assert info["input"]["image_size"] == 64 and info["input"]["resize"]
    assert {"torch", "lightning", "litserve"} <= set(info["versions"])
    assert info["server"]["max_batch_size"] == 8 and info["server"]["batch_timeout"] == 0.05
    assert {"defect_types", "image_threshold", "pixel_threshold", "object"} <= set(info["per_request"])
