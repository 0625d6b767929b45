"""ONNX export: onnxruntime parity, self-describing metadata, the ONNX predict path, TorchScript."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipmdc.export import ExportWrapper, OnnxPredictor, export_onnx, export_torchscript, onnx_predict
from clipmdc.memory import NormalMemory, image_ids
from clipmdc.presets import tiny
from tests.conftest import blob_pair, write_image

pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")

SIZE = 160  # the tiny preset's ViT native size: no position-embedding resampling in the graph


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = tiny(defect_types=["good", "scratch", "hole"], object_names=["plate"]).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", SIZE)
    return model, path


def _assert_parity(model: torch.nn.Module, path: Path) -> None:
    predictor = OnnxPredictor(path)
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    got = predictor(x.numpy())
    with torch.no_grad():
        ref = ExportWrapper(model)(x)
    for name, r in zip(("anomaly_map", "image_score", "type_probs"), ref, strict=True):
        assert got[name].shape == tuple(r.shape)
        assert np.abs(got[name] - r.numpy()).max() <= 1e-4, name
    assert got["type_probs"].shape == (3, 3) and np.allclose(got["type_probs"].sum(1), 1, atol=1e-5)


def test_onnxruntime_parity(exported) -> None:
    _assert_parity(*exported)


def test_onnxruntime_parity_with_normal_memory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny(defect_types=["good", "scratch", "hole"], memory=NormalMemory(coreset_ratio=0.5)).eval()
    normal = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.memory.build([(model.image_encoder(normal).tokens, image_ids([f"{i}.png" for i in range(4)]))])
    _assert_parity(model, export_onnx(model, tmp_path / "m.onnx", SIZE))  # the bank travels in the graph


def test_metadata_and_batch_axis(exported) -> None:
    _, path = exported
    predictor = OnnxPredictor(path)
    assert predictor.defect_types == ["good", "scratch", "hole"] and predictor.image_size == (SIZE, SIZE)
    assert predictor(np.random.rand(1, 3, SIZE, SIZE).astype(np.float32))["image_score"].shape == (1,)


def test_onnx_predict_writes_like_lightning_predict(exported, tmp_path: Path) -> None:
    _, path = exported
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.png", blob_pair(rng, size=48)[0])
    out = onnx_predict(path, [tmp_path / "imgs"], tmp_path / "out", batch_size=2)
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(x["explanation"].startswith("plate:") for x in lines)
    assert set(lines[0]["type_probabilities"]) == {"good", "scratch", "hole"}
    assert (out / "contact_sheet.png").is_file() and (out / "summary.csv").is_file()


def test_torchscript(exported, tmp_path: Path) -> None:
    model, _ = exported
    ts = torch.jit.load(str(export_torchscript(model, tmp_path / "m.pt", SIZE)))
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(ts(x), ExportWrapper(model)(x), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
