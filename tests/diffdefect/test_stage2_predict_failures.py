"""Stage 2 predicts every readable image of a folder with an unreadable file in it, and lists that file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from common.cli import main
from common.prediction import EXIT_SOME_FAILED
from tests.conftest import REPO

CFG = REPO / "configs" / "diffdefect"


def test_stage2_predict_skips_and_lists_an_unreadable_file(stage1_ckpt: Path, classid_root: Path, tmp_path: Path) -> None:
    images = sorted((classid_root / "img_dir" / "test").glob("*.jpg"))
    victim = images[1]
    victim.write_bytes(victim.read_bytes()[:200])
    out = tmp_path / "pred"
    args = ["--config", str(CFG / "stage2_openvocab.yaml"), "--config", str(CFG / "stage2_tiny.yaml"),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
            "--data.init_args.reader.init_args.root", str(classid_root),
            "--model.init_args.model.init_args.extractor.init_args.stage1_checkpoint", str(stage1_ckpt),
            "--data.init_args.predict_reader", "common.data.FolderReader",
            "--data.init_args.predict_reader.init_args.root", str(victim.parent),
            "--trainer.callbacks+=common.prediction.PredictionWriter", f"--trainer.callbacks.output_dir={out}"]
    assert main(["predict", *args]) == EXIT_SOME_FAILED
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["path"] for x in lines) == [str(p) for p in images if p != victim]
    with (out / "errors.csv").open(newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [str(victim)]
