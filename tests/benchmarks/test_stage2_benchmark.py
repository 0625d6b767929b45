"""Smoke run of ``benchmarks/stage2.py --quick`` on the real data (skipped without ../shared/data): stage 1,
both extractors under the same head, every reported figure present and in range."""

from __future__ import annotations

import json

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
        for kind in ("diffusion", "efficientnet"):
            run = data["results"][kind]
            m = run["metrics"]
            assert {"miou", "accuracy", "macro_f1", "bbox_map", "bbox_map_50", "segm_map", "segm_map_50",
                    "pixel_auroc", "pixel_aupro"} <= set(m)
            assert all(f"iou_{c}" in m for c in novel)
            assert all(0.0 <= v <= 1.0 for v in m.values())
            assert run["head_parameters"] > 0 and run["cache"]["misses"] > 0
        assert data["results"]["efficientnet"]["feature_strides"] == [4, 8, 16, 32]
        assert set(data["diffusion_minus_efficientnet"]) >= {"miou", "novel_iou", "accuracy"}
    assert "diffusion" in capsys.readouterr().out
