"""The served models in this process: a stage-2 checkpoint and a CLIP-MDC ONNX export predict what
``defectfm predict`` / ``defectfm onnx-predict`` write, and take per-request settings without reloading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.checkpoint import load_module
from common.serve.backend import CheckpointModel, OnnxModel
from common.serve.inputs import BadRequest
from tests.serve.test_server import ONLY_SERVE, same


def lines_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]


def test_stage2_checkpoint_predicts_what_defectfm_predict_writes(trained_stage2) -> None:
    lines = lines_of(trained_stage2["run"])
    model = CheckpointModel(trained_stage2["ckpt"])
    files = [(Path(x["path"]), "object") for x in lines]
    preds = model.predict(files, {})
    for line, pred in zip(lines, preds, strict=True):
        got = {"path": pred.path, **json.loads(json.dumps(pred.record, default=float))}
        assert same({k: v for k, v in got.items() if k not in ONLY_SERVE | {"object"}},
                    {k: v for k, v in line.items() if k not in ONLY_SERVE | {"object"}}), (got, line)
    # a class named only in the request (open vocabulary), then the checkpoint's classes again
    opened = model.predict(files[:1], {"defect_types": ["inclusion", "patches", "scratches", "rust"]})[0]
    assert opened.record["vocabulary"][-1] == "rust"
    assert model.predict(files[:1], {})[0].record["vocabulary"] == lines[0]["vocabulary"]
    info = model.describe()
    assert info["model"].endswith("Stage2Module") and info["vocabulary"]["defect_types"] == lines[0]["vocabulary"]
    with pytest.raises(BadRequest, match="image_threshold"):
        model.predict(files[:1], {"image_threshold": 0.5})  # stage 2 decides per pixel only


def test_onnx_export_predicts_what_onnx_predict_writes(trained_clip, tmp_path) -> None:
    from clipmdc.export import export_module, onnx_predict

    module = load_module(trained_clip["ckpt"]).eval()
    onnx = export_module(module, tmp_path / "model.onnx", 64)
    images = sorted(trained_clip["images"].rglob("*.png"))
    out = onnx_predict(onnx, [trained_clip["images"]], tmp_path / "onnx_run")
    lines = {x["path"]: x for x in lines_of(out)}
    model = OnnxModel(onnx)
    preds = model.predict([(p, model.object_of(None)) for p in images], {})
    for pred in preds:
        got = json.loads(json.dumps(pred.record, default=float))
        line = lines[pred.path]
        assert same(got, {k: v for k, v in line.items() if k not in ONLY_SERVE}), (got, line)
    low = model.predict([(images[0], "plate")], {"image_threshold": 0.0})[0].record
    assert low["is_anomalous"] and low["threshold_mode"] == "given"
    with pytest.raises(BadRequest, match="baked into the served ONNX"):
        model.predict([(images[0], "plate")], {"defect_types": ["good", "dent"]})
    assert model.describe()["input"]["image_size"] == [64, 64]
