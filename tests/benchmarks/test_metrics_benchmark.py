"""Smoke run of ``benchmarks/metrics.py --quick``: the JSON has every field and the figures are consistent."""

from __future__ import annotations

import json

from benchmarks import _common
from benchmarks import metrics as bench


def test_quick_benchmark_writes_consistent_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    bench.main(["--quick", "--no-anomalib"])
    data = json.loads((tmp_path / "metrics_quick.json").read_text())
    assert data["benchmark"] == "metrics_quick"
    assert {"platform", "versions", "cpu_count"} <= set(data["machine"])
    cfg = data["config"]
    assert cfg["quick"] and cfg["num_maps"] == 48 and cfg["components"] > cfg["anomalous_maps"] > 0
    full = data["full_set"]
    assert full["values"]["anomalib"] is None and full["ratios"]["anomalib_over_ours_exact"] is None
    assert any("anomalib" in n for n in data["notes"])
    assert full["deviation_from_reference"]["ours_exact"] < 1e-6
    assert full["deviation_from_reference"]["ours_binned"] < 1e-3
    assert all(t > 0 for k, t in full["times_s"].items() if k != "anomalib")
    sub = data["subset_plain_loop"]
    assert sub["deviation_from_plain_loop"]["ours_exact"] < 1e-6
    assert sub["deviation_from_plain_loop"]["reference_mvtec"] < 1e-9
    assert 0.0 < sub["plain_loop"] <= 1.0
    mem = data["memory"]["binned"]
    assert 0 < mem["peak_rss_gib"] < 4.0
    assert abs(mem["values"]["pixel_aupro"] - full["values"]["ours_binned"]) < 1e-6
    assert "ours_exact" in capsys.readouterr().out  # the printed table
