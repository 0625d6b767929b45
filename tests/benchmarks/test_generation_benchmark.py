"""Smoke run of ``benchmarks/generation.py --quick``: tiny stage 1 and a one-epoch CLIP-MDC judge trained in a
temporary folder; the JSON carries the goal, the settings, FD-Lite0 with both controls and the judged accuracies."""

from __future__ import annotations

import json

import pytest

from benchmarks import _common
from benchmarks import generation as bench
from tests.conftest import REPO


def test_derangement_has_no_fixed_point() -> None:
    for seed in range(5):
        perm = bench.derangement(8, seed)
        assert sorted(perm) == list(range(8)) and all(p != i for i, p in enumerate(perm))
    assert bench.derangement(8, 0) == bench.derangement(8, 0)


@pytest.mark.slow
def test_quick_benchmark_writes_goal_settings_and_controls(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.chdir(REPO)
    bench.main(["--quick", "--workdir", str(tmp_path / "work")])
    data = json.loads((tmp_path / "results" / "generation_quick.json").read_text())
    assert set(data["goal"]) == {"description", "met", "not_met"} and len(data["goal"]["met"] + data["goal"]["not_met"]) == 2
    assert data["settings"]["quick"] and "not FID" in data["settings"]["metric"]
    assert len(data["per_class"]) == 8
    for row in data["per_class"]:
        assert set(row["fd_lite0"]) == {"generated", "shuffled", "floor"}
        assert row["shuffled_from"] != f"{row['object']}/{row['class']}"
    assert 0.0 <= data["type_accuracy"] <= 1.0 and 0.0 <= data["judge_on_real_test"]["class_accuracy"] <= 1.0
