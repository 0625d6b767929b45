"""INT8 ONNX export (clipmdc.quantize): both onnxruntime modes run, keep the metadata and stay close to float."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipmdc.export import OnnxPredictor, export_onnx
from clipmdc.presets import tiny
from clipmdc.quantize import quantize_onnx


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_file_runs_and_follows_the_float_file(tmp_path, mode: str) -> None:
    torch.manual_seed(0)
    model = tiny(defect_types=["good", "scratch"]).eval()
    src = export_onnx(model, tmp_path / "model.onnx", image_size=64, metadata={"image_threshold": "0.25"})
    rng = np.random.default_rng(0)
    calibration = [rng.random((2, 3, 64, 64), dtype=np.float32) for _ in range(4)] if mode == "static" else None
    dst = quantize_onnx(src, tmp_path / f"model_int8_{mode}.onnx", mode, calibration)
    ref, q = OnnxPredictor(src), OnnxPredictor(dst)
    assert q.defect_types == ["good", "scratch"] and q.image_size == (64, 64)
    assert q.session.get_modelmeta().custom_metadata_map["image_threshold"] == "0.25"
    x = rng.random((3, 3, 64, 64), dtype=np.float32)
    a, b = ref(x), q(x)
    assert b["anomaly_map"].shape == a["anomaly_map"].shape == (3, 1, 64, 64)
    assert np.isfinite(b["anomaly_map"]).all()
    corr = np.corrcoef(a["anomaly_map"].ravel(), b["anomaly_map"].ravel())[0, 1]
    assert corr > 0.9, corr  # quantised, not broken: the maps keep their shape


def test_static_needs_calibration_and_modes_are_checked(tmp_path) -> None:
    src = export_onnx(tiny().eval(), tmp_path / "m.onnx", image_size=32)
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(src, tmp_path / "q.onnx", "static")
    with pytest.raises(ValueError, match="INT8 mode"):
        quantize_onnx(src, tmp_path / "q.onnx", "int4")
