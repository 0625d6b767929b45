"""Smoke run of ``benchmarks/shards.py --quick``: shards in precompute's layout, streamed by the DataModule."""

from __future__ import annotations

import json

from benchmarks import _common
from benchmarks import shards as bench


def test_quick_benchmark_writes_streams_and_deletes(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path / "results")
    work = tmp_path / "work"
    work.mkdir()
    bench.main(["--quick", "--samples", "300", "--maxcount", "64", "--workers", "0", "1", "--dir", str(work)])
    data = json.loads((tmp_path / "results" / "shards_quick.json").read_text())
    assert data["write"]["samples"] == 300 and data["write"]["shards"] == 5
    assert 60_000 < data["write"]["bytes_per_sample"] < 90_000  # (8, 64, 64) fp16 moments + embeddings
    assert [r["workers"] for r in data["read"]] == [0, 1]
    assert all(r["samples"] == 300 and r["samples_per_s"] > 0 for r in data["read"])  # equalize drops nothing
    assert data["per_worker_samples_per_s"] == data["read"][1]["samples_per_s"]
    assert data["workers_needed_per_node"] >= 1 and {"description", "met", "not_met"} <= set(data["goal"])
    assert list(work.iterdir()) == []  # the shards are deleted
    assert "per worker" in capsys.readouterr().out
