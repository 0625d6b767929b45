"""Stage-2 configs through the CLI: the paper config's values, fit -> test -> predict with a tiny stage-1
checkpoint (the extractor stays bit-identical through fit, nothing of it is saved, a name added on the command
line at test time becomes a class), the real-data configs and caption-only supervision on generated data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.cli import DefectCLI, main
from diffdefect.stage1.checkpoint import load_stage1
from diffdefect.stage2.metrics import LOSS_TERMS
from tests.conftest import REPO

CFG = REPO / "configs" / "diffdefect"
PAPER, TINY = str(CFG / "stage2_openvocab.yaml"), str(CFG / "stage2_tiny.yaml")
DEBUG = str(REPO / "configs" / "trainer" / "debug.yaml")
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_paper_config_values() -> None:
    cfg = yaml.safe_load(Path(PAPER).read_text())
    t, m, d = cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert t["max_epochs"] == 50 and t["precision"] == "bf16-mixed"
    assert d["batch_size"] * t["devices"] * t["num_nodes"] == 16 and d["few_shot"] == 200
    assert m["optimizer"]["init_args"]["lr"] == 5e-5 and "AdamW" in m["optimizer"]["class_path"]
    ext = m["model"]["init_args"]["extractor"]
    assert ext["class_path"] == "diffdefect.DiffusionFeatures" and ext["init_args"]["timestep"] == 50
    assert m["model"]["init_args"]["head"] == "full"
    assert m["criterion"]["init_args"]["weights"] == {"mask": 1.0, "dice": 1.0, "cls": 0.5, "ground": 0.5}
    assert m["criterion"]["init_args"]["matcher"]["init_args"]["num_points"] == 12544


def test_debug_smoke_of_the_paper_config_with_the_tiny_preset(classid_root: Path) -> None:
    assert main(["fit", "--config", PAPER, "--config", TINY, "--config", DEBUG,
                 "--data.init_args.reader.init_args.root", str(classid_root)]) == 0


def test_fit_keeps_extractor_frozen_then_test_and_predict_with_a_new_name(stage1_ckpt: Path, classid_root: Path,
                                                                            tmp_path: Path) -> None:
    args = ["--config", PAPER, "--config", TINY, *QUIET, "--data.init_args.reader.init_args.root", str(classid_root),
            "--model.init_args.model.init_args.extractor.init_args.stage1_checkpoint", str(stage1_ckpt),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.num_sanity_val_steps", "0"]
    cli = DefectCLI(args=["fit", *args, "--trainer.max_steps", "3"])
    assert cli.trainer.global_step == 3
    reference = load_stage1(stage1_ckpt).model.state_dict()
    frozen = cli.model.model.extractor.model.state_dict()
    assert reference.keys() == frozen.keys()
    assert all(torch.equal(reference[k], frozen[k]) for k in reference)  # bit-identical after training
    head = {k: v for k, v in cli.model.state_dict().items() if k.startswith("model.head.")}
    assert head and all(torch.isfinite(v).all() for v in head.values())
    (ckpt,) = sorted(tmp_path.rglob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=False)
    assert not any("extractor" in k or "text_encoder" in k for k in saved["state_dict"])
    assert saved["stage2_vocabulary"]["train"] == ["good", "inclusion", "patches", "scratches"]
    # test: "rust" is named only on the command line, after training
    names = "[inclusion,patches,scratches,rust]"
    test = DefectCLI(args=["test", *args, "--ckpt_path", str(ckpt), "--model.init_args.test_classes", names])
    metrics = {k.removeprefix("test/"): float(v) for k, v in test.trainer.callback_metrics.items()
               if k.startswith("test/") and k.removeprefix("test/") not in LOSS_TERMS}
    assert test.model.names["test"] == ["good", "inclusion", "patches", "scratches", "rust"]
    assert {"miou", "iou_rust", "accuracy", "macro_f1", "bbox_map", "bbox_map_50", "segm_map", "pixel_auroc",
            "pixel_aupro"} <= set(metrics)
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in metrics.values())  # image_auroc: NaN, no normal test image
    assert not math.isnan(metrics["miou"])
    # predict: overlays with class names, maps, one JSON line per image
    out = tmp_path / "pred"
    assert main(["predict", *args, "--ckpt_path", str(ckpt), "--model.init_args.test_classes", names,
                 "--trainer.callbacks+=common.prediction.PredictionWriter",
                 f"--trainer.callbacks.output_dir={out}"]) == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and lines[0]["vocabulary"][-1] == "rust"
    assert {"defect_type", "segments", "overlay", "map", "explanation"} <= set(lines[0])
    assert (out / lines[0]["overlay"]).is_file() and (out / "contact_sheet.png").is_file()
    from PIL import Image
    from pycocotools import mask as mask_utils

    for line in lines:  # the class-id mask agrees with the per-class RLE masks of the JSON
        ids = np.asarray(Image.open(out / line["mask"]))
        assert ids.max() < len(line["vocabulary"])
        for seg in line["segments"]:
            rle = mask_utils.decode({"size": seg["rle"]["size"], "counts": seg["rle"]["counts"].encode()})
            assert np.array_equal(rle.astype(bool), ids == line["vocabulary"].index(seg["class"]))


@pytest.mark.parametrize(("name", "fixture"), [("stage2_magnetic_tile.yaml", "magnetic_tile_root"),
                                               ("stage2_neu_seg.yaml", "classid_root")])
def test_real_data_configs_fit_and_test_on_generated_data(name: str, fixture: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(fixture)
    args = ["--config", str(CFG / name), "--config", TINY, "--config", DEBUG,
            "--data.init_args.reader.init_args.root", str(root), "--data.init_args.few_shot", "null"]
    assert main(["fit", *args]) == 0
    assert main(["test", *args]) == 0


def test_caption_only_supervision_logs_grounding(classid_root: Path) -> None:
    cli = DefectCLI(args=["fit", "--config", PAPER, "--config", TINY, "--config", DEBUG,
                          "--data.init_args.reader.init_args.root", str(classid_root),
                          "--model.init_args.supervision", "captions", "--data.init_args.batch_size", "6",
                          "--data.init_args.captions", "templated"])
    logged = cli.trainer.callback_metrics
    assert {"train/mask", "train/dice", "train/cls", "train/ground", "train/loss"} <= set(logged)
    assert all(torch.isfinite(logged[k]) for k in ("train/ground", "train/loss"))


def test_every_stage2_config_is_smoke_tested() -> None:
    covered = {"stage2_openvocab.yaml", "stage2_tiny.yaml", "stage2_magnetic_tile.yaml", "stage2_neu_seg.yaml"}
    assert {p.name for p in CFG.glob("stage2_*.yaml")} == covered
