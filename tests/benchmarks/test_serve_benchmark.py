"""Smoke run of ``benchmarks/serve.py --quick``: three real servers, every response checked (slow: minutes)."""

from __future__ import annotations

import json

import pytest

from benchmarks import _common
from benchmarks import serve as bench


@pytest.mark.slow
def test_quick_load_test_loses_and_mixes_nothing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path / "results")
    bench.main(["--quick", "--requests", "24", "--dir", str(tmp_path)])
    data = json.loads((tmp_path / "results" / "serve_quick.json").read_text())
    assert [r["mode"] for r in data["runs"]] == list(bench.MODES)
    for run in data["runs"]:
        assert [lv["clients"] for lv in run["levels"]] == [1, 4]
        assert all(lv["requests"] == 24 and lv["errors"] == 0 and lv["not_own"] == 0 for lv in run["levels"])
        assert all(lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"] for lv in run["levels"])
        assert run["rss_bytes"]["end"] > 0
    assert data["mixed_responses"] == 0 and data["settings"]["compared_scores"] == 24
    assert {"description", "met", "not_met"} <= set(data["goal"])
    assert "images/s" in capsys.readouterr().out
