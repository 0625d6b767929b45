"""A tiny trained CLIP-MDC checkpoint, a ``defectfm predict`` run of it, and a real ``defectfm serve`` process on a
free loopback port (started once for the module that asks for it, stopped after)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.cli import main
from common.serve.launch import Server, launch
from tests.conftest import REPO, fit_tiny_demo

DEMO = str(REPO / "configs" / "clipmdc" / "demo.yaml")
TINY = str(REPO / "configs" / "clipmdc" / "model" / "tiny.yaml")
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


def start_server(args: list[str], folder: Path) -> Server:
    """``defectfm serve ARGS`` on a free loopback port, healthy (:func:`common.serve.launch.launch`)."""
    return launch(args, folder)


@pytest.fixture(scope="session")
def trained_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLIP-MDC trained one epoch through ``lightning fit`` on generated data, and a ``defectfm predict``
    run of it on the plate's test images (the review page's source)."""
    trained = fit_tiny_demo(tmp_path_factory.mktemp("serve_trained"))
    data, ckpt_dir, tmp = trained["data"], trained["ckpt"].parent, trained["tmp"]
    folder = data / "plate" / "test"
    run = tmp / "predict_run"
    assert main(["predict", "--ckpt_path", str(ckpt_dir / "last.ckpt"), "--input", str(folder), "--out", str(run),
                 "--num_workers", "0", "--object", "plate"]) == 0
    return {"data": data, "ckpt": ckpt_dir / "last.ckpt", "images": folder, "run": run, "tmp": tmp}


@pytest.fixture(scope="session")
def clip_server(trained_clip: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``defectfm serve`` of the tiny CLIP-MDC (batches of up to 8, 50 ms wait), reviewing the predict run."""
    folder = tmp_path_factory.mktemp("serve_clip")
    server = start_server(["--ckpt_path", str(trained_clip["ckpt"]), "--max_batch_size", "8", "--batch_timeout",
                           "0.05", "--max_pixels", "4000000", "--max_bytes", "3000000", "--review_dir",
                           str(trained_clip["run"]), "--labels_csv", str(folder / "labels.csv")], folder)
    yield server
    server.stop()


# stage 2 needs a tiny stage-1 checkpoint: the session fixtures of the stage-2 tests
from tests.diffdefect.conftest import demo_manifest, demo_root, stage1_ckpt  # noqa: E402, F401

STAGE2 = REPO / "configs" / "diffdefect"


@pytest.fixture(scope="session")
def trained_stage2(stage1_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    """A tiny stage-2 model trained 3 steps through ``lightning fit`` on NEU-like class-id data, and a
    ``defectfm predict`` run of its test images."""
    import numpy as np

    from tests.conftest import blob_pair, write_image

    tmp = tmp_path_factory.mktemp("serve_stage2")
    root, rng = tmp / "neu_like", np.random.default_rng(0)
    (root).mkdir()
    (root / "labels.txt").write_text("__ignore__\n_background_\nInclusion\nPatches\nScratches\n")
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for i in range(n):
            img, m = blob_pair(rng)
            write_image(root / "img_dir" / split / f"{i:06d}.jpg", img)
            write_image(root / "ann_dir" / split / f"{i:06d}.png", m.astype(np.uint8) * (1 + i % 3))
    assert main(["fit", "--config", str(STAGE2 / "stage2_openvocab.yaml"), "--config", str(STAGE2 / "stage2_tiny.yaml"),
                 *QUIET, "--data.init_args.reader.init_args.root", str(root),
                 "--model.init_args.model.init_args.extractor.init_args.stage1_checkpoint", str(stage1_ckpt),
                 "--trainer.default_root_dir", str(tmp / "runs"), "--trainer.num_sanity_val_steps", "0",
                 "--trainer.max_steps", "3"]) == 0
    (ckpt,) = sorted((tmp / "runs").rglob("*.ckpt"))
    images = root / "img_dir" / "test"
    assert main(["predict", "--ckpt_path", str(ckpt), "--input", str(images), "--out", str(tmp / "predict_run"),
                 "--num_workers", "0"]) == 0
    return {"ckpt": ckpt, "images": images, "run": tmp / "predict_run", "tmp": tmp}
