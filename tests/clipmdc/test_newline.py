"""A generalist over several domains and a new line from good images only (issue 16 points 3, 4): the generalist
config trains on a corpus manifest with one memory per object; ``defectfm newline`` adds a product from its good
images with no gradient step (or a short fine-tune), calibrates its thresholds, and ``defectfm predict`` takes the
checkpoint it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.cli import main
from common.data.demo import generate_demo_dataset
from tests.conftest import REPO

GENERALIST = str(REPO / "configs" / "clipmdc" / "generalist.yaml")
TINY = str(REPO / "configs" / "clipmdc" / "model" / "tiny.yaml")
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def generalist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny generalist trained for one epoch with configs/clipmdc/generalist.yaml on a two-domain corpus."""
    tmp = tmp_path_factory.mktemp("generalist")
    demo = generate_demo_dataset(tmp / "demo", image_size=48, n_train_good=4, n_test_good=2, n_test_defect=1)
    wood = generate_demo_dataset(tmp / "wood", objects=("wood",), image_size=48, n_train_good=6, n_test_good=2,
                                 n_test_defect=1, seed=3)
    reader = {"data": {"init_args": {"reader": {"class_path": "common.data.MVTecReader",
                                                "init_args": {"root": str(demo)}}}}}
    (tmp / "demo.yaml").write_text(json.dumps(reader))
    assert main(["corpus", str(tmp / "demo.yaml"), "--out", str(tmp / "corpus")]) in (0, None)
    assert main(["fit", "--config", GENERALIST, "--config", TINY, *QUIET,
                 "--data.init_args.reader.init_args.root", str(tmp / "corpus" / "manifest.jsonl"),
                 "--data.init_args.image_size", "64", "--data.init_args.num_workers", "0",
                 "--data.init_args.batch_size", "8", "--trainer.max_epochs", "1",
                 "--model.init_args.model.init_args.memory.init_args.coreset_ratio", "0.5",
                 "--trainer.default_root_dir", str(tmp / "runs"),
                 "--trainer.callbacks.dirpath", str(tmp / "ckpt")]) == 0
    return {"tmp": tmp, "ckpt": tmp / "ckpt" / "last.ckpt", "wood": wood}


def test_generalist_keeps_one_memory_per_object(generalist: dict[str, Path]) -> None:
    ckpt = torch.load(generalist["ckpt"], weights_only=False)
    objects = ckpt["defectfm"]["vocabulary"]["object_names"]
    assert sorted(objects) == ["fabric", "plate"]
    tags = ckpt["state_dict"]["model.memory.bank_object"]
    assert sorted(tags.unique().tolist()) == [0, 1]  # each object's normals, kept apart
    assert (ckpt["state_dict"]["model.memory.object_scale"] > 0).all()


def test_newline_builds_the_new_object_without_a_gradient_step(generalist: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "wood.ckpt"
    good = generalist["wood"] / "wood" / "train" / "good"
    assert main(["newline", "--ckpt_path", str(generalist["ckpt"]), "--good", str(good), "--object", "wood",
                 "--out", str(out), "--defect_types", "[good,scratch,hole,stain,crack]"]) == 0
    assert "6 good images of 'wood': 5 build its memory, 1 calibrate" in capsys.readouterr().out
    before, after = torch.load(generalist["ckpt"], weights_only=False), torch.load(out, weights_only=False)
    vocab = after["defectfm"]["vocabulary"]
    assert vocab["object_names"] == [*before["defectfm"]["vocabulary"]["object_names"], "wood"]
    assert vocab["defect_types"] == ["good", "scratch", "hole", "stain", "crack"]
    sb, sa = before["state_dict"], after["state_dict"]
    # no gradient step: every trained weight is the generalist's
    for k, v in sb.items():
        if not k.startswith(("model.memory.", "thresholds.")):
            assert torch.equal(sa[k], v), k
    # the old objects' entries are kept, the new object has its own
    for obj in (0, 1):
        assert torch.equal(sa["model.memory.bank"][sa["model.memory.bank_object"] == obj],
                           sb["model.memory.bank"][sb["model.memory.bank_object"] == obj])
    assert int((sa["model.memory.bank_object"] == 2).sum()) > 0
    record = after["defectfm"]["newline"]
    assert record["object"] == "wood" and record["memory_images"] == 5 and record["calibration_images"] == 1
    assert record["thresholds"]["threshold_mode"] == "far" and record["thresholds"]["target_far"] == 0.01
    assert "optimizer_states" not in after
    # defectfm predict takes it as any checkpoint
    pred = tmp_path / "pred"
    test_images = generalist["wood"] / "wood" / "test"
    assert main(["predict", "--ckpt_path", str(out), "--input", str(test_images), "--object", "wood",
                 "--out", str(pred), "--num_workers", "0"]) == 0
    lines = [json.loads(x) for x in (pred / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and {x["object"] for x in lines} == {"wood"}
    assert all(x["image_threshold"] == pytest.approx(record["thresholds"]["image_threshold"]) for x in lines)
    assert list(lines[0]["type_probabilities"]) == ["good", "scratch", "hole", "stain", "crack"]


def test_newline_short_finetune_changes_the_weights(generalist: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "wood_ft.ckpt"
    good = generalist["wood"] / "wood" / "train" / "good"
    assert main(["newline", "--ckpt_path", str(generalist["ckpt"]), "--good", str(good), "--object", "wood",
                 "--out", str(out), "--finetune_epochs", "1"]) == 0
    before, after = torch.load(generalist["ckpt"], weights_only=False), torch.load(out, weights_only=False)
    assert after["defectfm"]["newline"]["finetune_epochs"] == 1
    assert not torch.equal(after["state_dict"]["model.anomaly_head.weight"], before["state_dict"]["model.anomaly_head.weight"])


def test_newline_errors_are_one_line(generalist: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = str(generalist["ckpt"])
    cases = [(["--good", str(tmp_path / "missing"), "--object", "wood"], "missing does not exist"),
             (["--good", str(tmp_path)], "the following arguments are required: --object"),
             (["--good", str(generalist["wood"]), "--object", "wood", "--calibration_fraction", "1.5"],
              "--calibration_fraction must be in (0, 1)")]
    for extra, message in cases:
        assert main(["newline", "--ckpt_path", ckpt, "--out", str(tmp_path / "x.ckpt"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.ckpt").exists()
    tiled = torch.load(ckpt, weights_only=False)  # a checkpoint trained in tile mode: said, not silently stretched
    tiled["defectfm"]["data"]["resize"] = "tile"
    torch.save(tiled, tmp_path / "tiled.ckpt")
    assert main(["newline", "--ckpt_path", str(tmp_path / "tiled.ckpt"), "--out", str(tmp_path / "x.ckpt"),
                 "--good", str(generalist["wood"]), "--object", "wood"]) == 2
    assert "supports checkpoints trained with resize: stretch, this one used 'tile'" in capsys.readouterr().err
