"""Smoke run of ``benchmarks/stage1.py --quick`` on CPU (tiny preset): JSON fields and counted FLOPs."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import _common
from benchmarks import stage1 as bench


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a shared 2-core machine (see tests/diffdefect/conftest.py)
    yield
    torch.set_num_threads(before)


def test_quick_benchmark_writes_consistent_json(tmp_path, monkeypatch, capsys, one_thread) -> None:
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    bench.main(["--quick", "--steps", "2", "--warmup", "1"])
    data = json.loads((tmp_path / "stage1_quick.json").read_text())
    assert data["benchmark"] == "stage1_quick" and {"platform", "versions"} <= set(data["machine"])
    cfg, flops = data["config"], data["flops"]
    if not torch.cuda.is_available():
        assert cfg["preset"] == "tiny" and data["notes"]
        assert [(r["compile"], r["gradient_checkpointing"]) for r in data["results"]] == [(False, False), (False, True)]
    assert all(r["samples_per_s"] > 0 and r["achieved_tflops"] > 0 for r in data["results"])
    assert flops["train_step_per_sample"] == 3 * flops["forward_per_sample_one_token"]
    assert flops["forward_per_sample_77_tokens"] > flops["forward_per_sample_one_token"] > 0
    assert "samples/s" in capsys.readouterr().out


def test_full_unet_flops_are_counted_on_the_meta_device() -> None:
    fwd77 = bench.forward_flops("sd15", 1, 77, 768, 64)
    assert 0.79e12 < fwd77 < 0.82e12  # 803 GFLOPs with attention; 677 G of it outside the attention matmuls
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert bench.peak_tflops("cpu", 123.0) == 123.0
