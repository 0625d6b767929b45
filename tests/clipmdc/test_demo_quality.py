"""`make demo` reaches its quality bar: I-AUROC >= 0.95, P-AUROC >= 0.95, defect-type accuracy >= 0.9 (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.demo import run_demo
from tests.conftest import REPO


@pytest.mark.slow
def test_demo_reaches_quality_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the demo config writes runs/demo/... relative to the working directory
    metrics = run_demo(data=str(tmp_path / "demo"), config=str(REPO / "configs" / "clipmdc" / "demo.yaml"))
    assert metrics["test/image_auroc"] >= 0.95
    assert metrics["test/pixel_auroc"] >= 0.95
    assert metrics["test/type_accuracy"] >= 0.9
    predict = tmp_path / "runs" / "demo" / "predict"
    assert (predict / "contact_sheet.png").is_file() and (predict / "predictions.jsonl").is_file()
