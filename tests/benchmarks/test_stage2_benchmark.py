"""Smoke run of ``benchmarks/stage2.py --quick`` on the real data (skipped without ../shared/data): stage 1,
both extractors under the same head, every reported figure present and in range."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import _common
from benchmarks import stage2 as bench
from tests.conftest import shared_data


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_benchmark_writes_both_datasets(tmp_path, monkeypatch, capsys, one_thread) -> None:
    root = shared_data("magnetic_tile").parent
    shared_data("neu_seg")
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    bench.main(["--quick", "--data-root", str(root)])
    for name, novel in (("magnetic_tile", ["crack", "fray"]), ("neu_seg", ["scratches"])):
        data = json.loads((tmp_path / f"stage2_{name}_quick.json").read_text())
        cfg = data["config"]
        assert cfg["novel_classes"] == novel and not set(novel) & set(cfg["base_classes"])
        assert cfg["stage1"]["steps"] == 2 and cfg["stage1"]["pairs"] > 0
        assert cfg["stage1"]["vae"]["steps"] == 2 and cfg["stage1"]["vae"]["scaling_factor"] > 0  # trained VAE
        for kind in ("diffusion", "efficientnet"):
            run = data["results"][kind]
            m = run["metrics"]
            assert {"miou", "accuracy", "macro_f1", "bbox_map", "bbox_map_50", "segm_map", "segm_map_50",
                    "pixel_auroc", "pixel_aupro"} <= set(m)
            assert all(f"iou_{c}" in m for c in novel)
            # undefined on the tiny quick split (e.g. a class absent from it) is NaN, never a made-up 0.0
            assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in m.values())
            assert not math.isnan(m["miou"]) and not math.isnan(m["pixel_auroc"])
            assert run["head_parameters"] > 0 and run["cache"]["misses"] > 0
        assert data["results"]["efficientnet"]["feature_strides"] == [4, 8, 16, 32]
        captions = data["results"]["efficientnet_captions"]  # caption-only supervision: grounding loss logged
        assert "train/ground" in captions["last_train_step"] and "miou" in captions["metrics"]
        assert set(data["diffusion_minus_efficientnet"]) >= {"miou", "novel_iou", "accuracy"}
    assert "diffusion" in capsys.readouterr().out


def test_train_vae_reconstructs_better_than_random_and_loads_back_frozen(tmp_path, one_thread) -> None:
    """The benchmark's stand-in for SD's VAE: trained briefly, saved, loaded frozen, latents scaled to std 1."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from common.encoders.vae import FrozenVAE

    rng = np.random.default_rng(0)
    records = []
    for i in range(8):  # smooth blobs: learnable structure, not noise
        yy, xx = np.mgrid[:32, :32]
        img = np.stack([np.exp(-((xx - rng.uniform(4, 28)) ** 2 + (yy - rng.uniform(4, 28)) ** 2) / 60.0)] * 3, -1)
        path = tmp_path / f"im{i}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(path)
        records.append(SimpleNamespace(image_path=path))
    cfg = {"image_size": 32, "vae_steps": 60, "vae_kl_weight": 1e-4, "stage1_batch": 4}
    vae, summary = bench.train_vae(records, cfg, tmp_path)
    images = bench.load_images(records, 32)

    def l1(v: FrozenVAE) -> float:
        return float((v.decode(v.encode(images, sample=False)) - images).abs().mean())

    assert summary["steps"] == 60 and (tmp_path / "vae" / "config.json").is_file()
    assert l1(vae) < 0.5 * l1(FrozenVAE(preset="tiny"))
    assert not any(p.requires_grad for p in vae.parameters())
    latents = vae.sample_latents(vae.encode_moments(images), sample=False)
    assert abs(float(latents.std()) - 1.0) < 0.05
