"""``defectfm serve`` of a stage-2 checkpoint and of a CLIP-MDC ONNX export, as real servers (slow: two more
server start-ups; the same models are checked in this process by test_backends.py in the default run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from common.checkpoint import load_module
from tests.serve.conftest import start_server
from tests.serve.test_server import ONLY_SERVE, post_file, same

pytestmark = pytest.mark.slow


def test_serve_stage2_checkpoint(trained_stage2, tmp_path) -> None:
    server = start_server(["--ckpt_path", str(trained_stage2["ckpt"]), "--max_batch_size", "4"], tmp_path)
    try:
        lines = [json.loads(x) for x in (trained_stage2["run"] / "predictions.jsonl").read_text().splitlines()]
        for line in lines:
            got = post_file(server.url, Path(line["path"])).json()
            assert same({k: v for k, v in got.items() if k not in ONLY_SERVE},
                        {k: v for k, v in line.items() if k not in ONLY_SERVE})
        opened = post_file(server.url, Path(lines[0]["path"]), defect_types="[inclusion,patches,scratches,rust]")
        assert opened.json()["vocabulary"][-1] == "rust"
        bad = post_file(server.url, Path(lines[0]["path"]), image_threshold="0.5")
        assert bad.status_code == 400 and "image_threshold" in bad.json()["error"]
        assert requests.get(server.url + "/info", timeout=10).json()["model"].endswith("Stage2Module")
    finally:
        server.stop()


def test_serve_onnx_export(trained_clip, tmp_path) -> None:
    from clipmdc.export import export_module, onnx_predict

    onnx = export_module(load_module(trained_clip["ckpt"]).eval(), tmp_path / "model.onnx", 64)
    run = onnx_predict(onnx, [trained_clip["images"]], tmp_path / "onnx_run")
    server = start_server(["--onnx", str(onnx), "--ckpt_path", str(trained_clip["ckpt"])], tmp_path)
    try:
        for line in [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]:
            got = post_file(server.url, Path(line["path"])).json()
            assert same({k: v for k, v in got.items() if k not in ONLY_SERVE},
                        {k: v for k, v in line.items() if k not in ONLY_SERVE})
        r = post_file(server.url, Path(line["path"]), defect_types="[good,dent]")
        assert r.status_code == 400 and "ONNX" in r.json()["error"]
        assert requests.get(server.url + "/info", timeout=10).json()["onnx"] == str(onnx)
    finally:
        server.stop()
