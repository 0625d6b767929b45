"""``python -m benchmarks.resolution --quick`` runs the benchmark's code end to end on generated long images."""

from __future__ import annotations

import json
import math

from benchmarks.resolution import MODES, main


def test_quick_run_writes_every_arm_with_goal_and_settings(tmp_path) -> None:
    payload = main(["--quick", "--train-seconds", "3", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "resolution.json").read_text())
    assert saved["settings"]["preset"] == "tiny" and saved["settings"]["train_seconds"] == 3
    assert set(saved["goal"]) == {"description", "met", "not_met"}
    assert len(saved["goal"]["met"]) + len(saved["goal"]["not_met"]) == 2
    arms = payload["results"]["generated"]
    assert set(arms) == set(MODES)
    for r in arms.values():
        assert all(math.isfinite(r[k]) for k in ("p_auroc", "aupro", "ap_loc", "images_per_s"))
        assert r["train_steps"] > 0 and r["test_images"] == 8
    assert saved["recommended"]["generated"]["recommended"] in MODES
