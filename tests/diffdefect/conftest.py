"""Shared stage-1 fixtures: small generated demo data, its caption manifest, latent shards, a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.data.demo import generate_demo_dataset
from common.encoders import TimmImage, TinyText
from common.encoders.vae import FrozenVAE
from diffdefect import DiffusionUNet, ImplicitCaptioner, Stage1Model
from diffdefect.stage1.captions import build_manifest
from diffdefect.stage1.conditioning import ConditioningMixer
from diffdefect.stage1.schedule import NoiseSchedule
from tests.conftest import REPO

TINY_CONFIGS = [
    str(REPO / "configs" / "stage1_diffusion.yaml"),
    str(REPO / "configs" / "diffdefect" / "stage1_tiny.yaml"),
]


def tiny_model(prediction_type: str = "epsilon", context: str = "token", cfg_dropout: float = 0.0, **kw) -> Stage1Model:
    """The tiny preset of configs/diffdefect/stage1_tiny.yaml, built in Python (seeded, so always the same)."""
    torch.manual_seed(0)
    return Stage1Model(
        unet=DiffusionUNet("tiny"),
        vae=FrozenVAE(preset="tiny"),
        text_encoder=TinyText(32),
        image_encoder=TimmImage("test_vit", image_size=32, layers=[2]),
        captioner=ImplicitCaptioner(64, 32, 32),
        schedule=NoiseSchedule(prediction_type=prediction_type),
        conditioning=ConditioningMixer(cfg_dropout=cfg_dropout, context=context),
        **kw,
    )


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated demo data (MVTec layout): 2 objects x (4 train good + 2 test good + 3 types x 2), 32 px."""
    out = tmp_path_factory.mktemp("stage1") / "demo"
    return generate_demo_dataset(out, seed=0, image_size=32, n_train_good=4, n_test_good=2, n_test_defect=2)


@pytest.fixture(scope="session")
def demo_manifest(demo_root: Path) -> Path:
    """The image-text manifest of the demo data, built by diffdefect.stage1.captions (24 pairs)."""
    from common.data import MVTecReader

    return build_manifest(MVTecReader(demo_root), demo_root.parent / "pairs.jsonl")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core machine OpenMP
    threads spinning against another busy process slow small ops down by two orders of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- stage 2
@pytest.fixture(scope="session")
def stage1_ckpt(demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny stage-1 checkpoint written by `lightning fit` (2 steps: it carries the model config and EMA)."""
    from common.cli import main as cli_main

    root = tmp_path_factory.mktemp("stage1_for_stage2")
    assert cli_main(["fit", "--config", TINY_CONFIGS[0], "--config", TINY_CONFIGS[1],
                     "--data.source", str(demo_manifest), "--trainer.max_steps", "2", "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                     "--trainer.default_root_dir", str(root), "--trainer.num_sanity_val_steps", "0"]) == 0
    (ckpt,) = sorted(root.rglob("*.ckpt"))
    return ckpt
