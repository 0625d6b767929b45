"""Smoke run of ``python -m benchmarks.synthesis --quick``: it runs and writes the documented JSON fields."""

from __future__ import annotations

import importlib.util
import json

from benchmarks import _common
from benchmarks import synthesis as bench

HAS_ANOMALIB = importlib.util.find_spec("anomalib") is not None


def _check(data: dict, with_peer: bool) -> None:
    assert data["benchmark"] == "synthesis_quick" and data["quick"] is True
    assert data["machine"]["torch_threads"] == 1 and "versions" in data["machine"]
    assert {r["case"] for r in data["results"]} == set(bench.CASES)
    for r in data["results"]:
        assert r["size"] == 64
        assert r["ours_per_sample_ips"] > 0 and r["ours_batched_ips"] > 0
        if with_peer:
            assert r["anomalib_ips"] > 0
            assert abs(r["ratio_per_sample"] - r["ours_per_sample_ips"] / r["anomalib_ips"]) < 1e-9
            assert data["ratios"][f"64/{r['case']}"]["per_sample"] == r["ratio_per_sample"]
        else:
            assert r["anomalib_ips"] is None and r["ratio_per_sample"] is None
    assert set(data["goal"]) >= {"size", "case", "min_ratio", "ratio", "met"}


def test_quick_run_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    payload = bench.main(["--quick"] if HAS_ANOMALIB else ["--quick", "--no-anomalib"])
    data = json.loads((tmp_path / "synthesis_quick.json").read_text())
    assert data["results"] == json.loads(json.dumps(payload["results"]))
    _check(data, with_peer=HAS_ANOMALIB)
    if not HAS_ANOMALIB:
        assert "skipped" in data["note"]
    out = capsys.readouterr().out
    assert "ours per-sample" in out and "self_source" in out


def test_quick_run_without_peer(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    bench.main(["--quick", "--no-anomalib"])
    data = json.loads((tmp_path / "synthesis_quick.json").read_text())
    _check(data, with_peer=False)
    assert "skipped" in data["note"] and data["goal"]["met"] is None
