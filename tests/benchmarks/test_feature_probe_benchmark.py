"""``benchmarks/feature_probe.py``: the probe itself on generated features, and a ``--quick`` run on the real
data (skipped without ../shared/data)."""

from __future__ import annotations

import json

import torch

from benchmarks import _common
from benchmarks import feature_probe as bench
from tests.conftest import shared_data


def test_probe_separates_an_informative_channel_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(8, 16, 16, generator=g) > 0.9).float()  # (N, G, G)
    noise = torch.randn(8, 3, 16, 16, generator=g)
    informative = torch.cat([noise, masks[:, None] + 0.5 * torch.randn(8, 1, 16, 16, generator=g)], 1)
    train, test = slice(0, 4), slice(4, 8)
    good = bench.probe_auroc([informative[train]], [informative[test]], masks[train], masks[test], 1000)
    blind = bench.probe_auroc([noise[train]], [noise[test]], masks[train], masks[test], 1000)
    assert good > 0.9 and abs(blind - 0.5) < 0.1, (good, blind)


def test_quick_run_writes_every_source(tmp_path, monkeypatch) -> None:
    root = shared_data("magnetic_tile").parent
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    before = torch.get_num_threads()
    try:
        bench.main(["--quick", "--data-root", str(root)])
    finally:
        torch.set_num_threads(before)
    data = json.loads((tmp_path / "feature_probe_quick.json").read_text())
    assert set(data["results"]) == {"pixels", "vae_random", "vae_trained", "diffusion_random_vae",
                                    "diffusion_trained_vae", "efficientnet"}
    assert all(0.0 <= r["pixel_auroc"] <= 1.0 and r["channels"] > 0 for r in data["results"].values())
    assert data["vae"]["steps"] == 2 and data["config"]["grid"] == 16
