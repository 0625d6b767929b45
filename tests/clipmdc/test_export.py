"""ONNX export: onnxruntime parity, self-describing metadata, the ONNX predict path, TorchScript."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipmdc.export import ExportWrapper, OnnxPredictor, export_onnx, export_torchscript, onnx_predict
from clipmdc.memory import NormalMemory
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


def _assert_parity(model: torch.nn.Module, path: Path, size: int = SIZE) -> None:
    predictor = OnnxPredictor(path)
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    got = predictor(x.numpy())
    with torch.no_grad():
        ref = ExportWrapper(model)(x)
    for name, r in zip(("anomaly_map", "image_score", "type_probs"), ref, strict=True):
        assert got[name].shape == tuple(r.shape)
        assert np.abs(got[name] - r.numpy()).max() <= 1e-4, name
    assert got["type_probs"].shape == (3, len(model.defect_types)) and np.allclose(got["type_probs"].sum(1), 1, atol=1e-5)


def test_onnxruntime_parity(exported) -> None:
    _assert_parity(*exported)


def test_onnxruntime_parity_with_normal_memory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny(defect_types=["good", "scratch", "hole"], memory=NormalMemory(coreset_ratio=0.5)).eval()
    normal = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.memory.build([(model.image_encoder(normal).tokens, torch.arange(4))])
    _assert_parity(model, export_onnx(model, tmp_path / "m.onnx", SIZE))  # the bank travels in the graph


def _with_memory(model: torch.nn.Module, size: int) -> torch.nn.Module:
    normal = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.memory.build([(model.image_encoder(normal).tokens, torch.arange(2))])
    return model


def test_gaussian_smooth_matches_a_reference_blur() -> None:
    from scipy import ndimage

    from clipmdc.decoder import gaussian_smooth

    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 2.0, 2.0), mode="mirror", truncate=4.0)
    assert np.abs(gaussian_smooth(x, 2.0).numpy() - ref).max() < 1e-12
    assert gaussian_smooth(x, 0.0) is x


@pytest.mark.parametrize("preset", ["tiny_smoothed", "tiny_128px", "offline_real"])
def test_export_with_each_presets_defaults(preset: str, tmp_path: Path) -> None:
    """Smoothing (sigma 4, the default of offline_real and vit_b16) and the normal memory export, and onnxruntime
    matches torch within 1e-4 (the export used to fail: "convolution for kernel of unknown shape"). At 128 px
    the tiny ViT resamples its position embeddings (antialiased bicubic: no ONNX symbolic before)."""
    torch.manual_seed(0)
    if preset.startswith("tiny"):
        size = SIZE if preset == "tiny_smoothed" else 128
        model = tiny(defect_types=["good", "scratch"], smooth_sigma=4.0, memory=NormalMemory(coreset_ratio=0.5))
    else:
        from clipmdc.presets import offline_real

        model, size = offline_real(defect_types=["good", "scratch"], memory=NormalMemory(coreset_ratio=0.2)), 96
    assert model.smooth_sigma == 4.0
    model = _with_memory(model.eval(), size)
    _assert_parity(model, export_onnx(model, tmp_path / "m.onnx", size), size)


@pytest.mark.slow
def test_export_vit_b16_defaults(tmp_path: Path) -> None:
    """vit_b16 with random open_clip weights (nothing downloaded) at 256 px, the size of its configs (the encoder
    resizes to 224 with antialiasing): ~2-3 min and a 350 MB file on 2 CPU cores."""
    from clipmdc.presets import vit_b16

    torch.manual_seed(0)
    model = vit_b16(pretrained=None, backbone_weights=None, defect_types=["good", "scratch"],
                    memory=NormalMemory(coreset_ratio=0.2)).eval()
    model = _with_memory(model, 256)
    _assert_parity(model, export_onnx(model, tmp_path / "m.onnx", 256), 256)


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


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("src", "dst"), [((256, 200), (224, 224)), ((128, 96), (160, 150)), ((10, 12), (10, 7))])
def test_antialiased_resize_as_matmul_matches_torch(mode: str, src: tuple, dst: tuple) -> None:
    import torch.nn.functional as F

    from common.onnx_compat import antialias_as_matmul

    x = torch.rand(2, 3, *src, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = F.interpolate(x, size=dst, mode=mode, align_corners=False, antialias=True)
    with antialias_as_matmul():
        got = F.interpolate(x, size=dst, mode=mode, align_corners=False, antialias=True)
        got32 = F.interpolate(x.float(), size=dst, mode=mode, align_corners=False, antialias=True)
        plain = F.interpolate(x, size=dst, mode="bilinear", align_corners=False)  # not antialiased: untouched
    assert (got - ref).abs().max() < 1e-12  # the same linear map as PyTorch's kernel
    assert (got32 - ref).abs().max() < 1e-4  # float32: PyTorch's own float32 kernel differs by ~1e-5
    assert torch.equal(plain, F.interpolate(x, size=dst, mode="bilinear", align_corners=False))
    assert F.interpolate.__module__ == "torch.nn.functional"  # restored


@pytest.mark.parametrize("training", [False, True])
def test_export_leaves_the_model_in_its_mode(training: bool, tmp_path: Path) -> None:
    """torch.onnx.export restores the wrapper's mode: a new wrapper is in training mode, which left the model in
    training mode after export (BatchNorm on batch statistics: other maps than the exported file's)."""
    model = tiny().train(training)
    modes = {n: m.training for n, m in model.named_modules()}
    export_onnx(model, tmp_path / "m.onnx", SIZE)
    assert {n: m.training for n, m in model.named_modules()} == modes
    export_torchscript(model, tmp_path / "m.pt", SIZE)
    assert {n: m.training for n, m in model.named_modules()} == modes
