"""``python -m benchmarks.generalist --quick``: leave-one-domain-out on three generated domains (tiny preset), every
arm through the same code as the real run (configs/clipmdc/generalist.yaml via the CLI, defectfm newline,
PatchCore, in-domain normal-only): JSON fields, the goal block and the table. Needs anomalib (the peers)."""

from __future__ import annotations

import importlib.util
import json

import pytest

HAS_ANOMALIB = importlib.util.find_spec("anomalib") is not None


def test_quick_run_writes_results(tmp_path, capsys, monkeypatch):
    if not HAS_ANOMALIB:
        pytest.skip("anomalib (the `bench` extra) is not installed: the PatchCore peer cannot be built")
    from benchmarks import generalist as bench
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the configs are named relative to the repository, as in README's command
    bench.main(["--quick", "--results-dir", str(tmp_path)])
    out = json.loads((tmp_path / "generalist_quick.json").read_text())
    assert out["quick"] is True and out["settings"]["held_out"] == ["wood"]
    assert set(out["settings"]["subset_counts"]) == {"plate", "fabric", "wood"}
    res = out["results"]["wood"]
    assert set(bench.ARMS) <= set(res)
    for arm in bench.ARMS:
        assert all(0.0 <= res[arm][m] <= 1.0 for m in bench.METRICS), (arm, res[arm])
        assert res[arm]["seconds"] >= 0
    assert res["generalist"]["finetune_epochs"] == 0 and res["generalist_ft"]["finetune_epochs"] == 1
    assert res["generalist"]["chance"] == pytest.approx(1 / (len(res["names"]) - 1))
    assert set(out["goal"]) >= {"description", "met", "not_met", "achieved"}
    assert len(out["goal"]["met"]) + len(out["goal"]["not_met"]) == 2 * 2 * len(bench.METRICS)
    assert "leave-one-domain-out" in capsys.readouterr().out
