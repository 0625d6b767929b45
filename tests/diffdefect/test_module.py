"""Stage1Module: the CLI smoke run of the paper config + tiny preset, exact resume, EMA, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from common.cli import main as cli_main
from common.data import ManifestReader
from common.data.image_text import ImageTextDataModule
from diffdefect import Stage1Module
from diffdefect.stage1.checkpoint import load_stage1
from diffdefect.stage1.sampling import generate, generation_metrics, synthesize_defects
from diffdefect.stage1.sampling import main as sample_main
from tests.conftest import REPO
from tests.diffdefect.conftest import TINY_CONFIGS, tiny_model

DEBUG = str(REPO / "configs" / "trainer" / "debug.yaml")


def test_cli_fit_smoke_paper_config_with_tiny_preset(demo_manifest: Path) -> None:
    assert cli_main(["fit", "--config", TINY_CONFIGS[0], "--config", TINY_CONFIGS[1], "--config", DEBUG,
                     "--data.source", str(demo_manifest)]) == 0


def test_paper_config_values() -> None:
    import yaml

    cfg = yaml.safe_load(Path(TINY_CONFIGS[0]).read_text())
    t, m, d = cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert t["precision"] == "bf16-mixed" and t["devices"] == 8 and t["max_epochs"] == 100
    assert d["batch_size"] * t["accumulate_grad_batches"] * t["devices"] == 256 and d["image_size"] == 512
    assert m["optimizer"]["init_args"]["lr"] == 1e-4 and "AdamW" in m["optimizer"]["class_path"]
    assert m["model"]["init_args"]["unet"]["init_args"]["preset"] == "sd15"
    assert m["loss"]["init_args"]["weights"] == {"diff": 1.0, "imp": 0.3}


def make_module(**kw) -> Stage1Module:
    return Stage1Module(tiny_model(), ema_decay=0.9, **kw)


def fit(source: Path, root: Path, max_steps: int, ckpt_path: str | None = None, every: int | None = None,
        mode: str = "pixels"):
    module = make_module()
    data = ImageTextDataModule(str(source), mode=mode, image_size=16, batch_size=4, num_workers=0, seed=5,
                               shuffle_buffer=6)
    callbacks = []
    if every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1,
                                                             filename="{step}"))
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
                        default_root_dir=root, num_sanity_val_steps=0, deterministic=True)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, module


@pytest.fixture(scope="module")
def latent_shards(demo_manifest: Path, tmp_path_factory) -> Path:
    from diffdefect.stage1.precompute import precompute

    m = tiny_model()
    out = tmp_path_factory.mktemp("latent_shards")
    precompute(str(demo_manifest), out, m.vae, m.text_encoder, m.image_encoder, image_size=16, batch_size=8,
               num_workers=0, maxcount=5)  # 24 samples in 5 shards
    return out


@pytest.mark.parametrize("kind", ["manifest", "latent_shards"])
def test_resume_mid_epoch_is_exact(request, kind: str, tmp_path: Path) -> None:
    source = request.getfixturevalue("demo_manifest" if kind == "manifest" else "latent_shards")
    mode = "pixels" if kind == "manifest" else "latents"
    # 24 pairs / batch 4 = 6 steps per epoch; resume from step 4 (mid epoch 0), 6 (its last batch), 8 (mid epoch 1)
    full_trainer, full = fit(source, tmp_path / "full", max_steps=10, every=2, mode=mode)
    for step in (4, 6, 8):
        ckpt = tmp_path / "full" / f"step={step}.ckpt"
        trainer, resumed = fit(source, tmp_path / f"resumed{step}", max_steps=10, ckpt_path=str(ckpt), mode=mode)
        assert trainer.global_step == full_trainer.global_step == 10
        assert trainer.current_epoch == full_trainer.current_epoch
        for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=k)
        sa, sb = full_trainer.optimizers[0].state_dict(), trainer.optimizers[0].state_dict()
        for pid, st in sa["state"].items():
            for key, value in st.items():
                torch.testing.assert_close(sb["state"][pid][key], value, atol=1e-6, rtol=0)
        assert resumed.ema.num_updates == full.ema.num_updates == 10
        for k, v in full.ema.shadow.items():
            torch.testing.assert_close(resumed.ema.shadow[k], v, atol=1e-6, rtol=0)
    # the checkpoint holds the EMA and no frozen-encoder weights
    state = torch.load(tmp_path / "full" / "step=4.ckpt", weights_only=False)
    assert state["ema"]["num_updates"] == 4 and state["ImageTextDataModule"] == {"epoch": 0, "batches": 4}
    assert torch.load(tmp_path / "full" / "step=8.ckpt", weights_only=False)["ImageTextDataModule"] == {"epoch": 1,
                                                                                                       "batches": 2}
    assert not any(".vae." in k or "text_encoder" in k or "image_encoder" in k for k in state["state_dict"])


def test_validation_loss_is_deterministic_and_ema_differs_from_weights(demo_manifest: Path, tmp_path: Path) -> None:
    _, module = fit(demo_manifest, tmp_path, max_steps=3)
    data = ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=6, num_workers=0, shuffle=False)
    b = next(iter(data.train_dataloader()))
    a1, a2 = module.evaluation_losses(b, 0), module.evaluation_losses(b, 0)
    assert set(a1) == {"diff", "imp", "diff_t100", "diff_t300", "diff_t500", "diff_t700", "diff_t900"}
    torch.testing.assert_close(a1["diff"], a2["diff"])
    with module.ema.swapped(module.model):
        e = module.evaluation_losses(b, 0)
    assert not torch.equal(e["diff"], a1["diff"])
    torch.testing.assert_close(module.evaluation_losses(b, 0)["diff"], a1["diff"])  # weights restored


@pytest.fixture(scope="module")
def trained_ckpt(demo_manifest: Path, tmp_path_factory) -> Path:
    """A checkpoint written by `lightning fit` (so it carries the model config), 3 tiny steps."""
    root = tmp_path_factory.mktemp("cli_run")
    assert cli_main(["fit", "--config", TINY_CONFIGS[0], "--config", TINY_CONFIGS[1],
                     "--data.source", str(demo_manifest), "--trainer.max_steps", "3", "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
                     "--trainer.num_sanity_val_steps", "0"]) == 0
    (ckpt,) = sorted(root.rglob("*.ckpt"))
    return ckpt


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_generate_shapes_seed_and_guidance(trained_ckpt: Path, scheduler: str) -> None:
    model = load_stage1(trained_ckpt).model
    prompts = ["a plate with a scratch", "a fabric with a hole", "a plate"]
    a = generate(model, prompts, scheduler=scheduler, steps=4, guidance=3.0, seed=1, batch_size=2)
    assert a.shape == (3, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(generate(model, prompts, scheduler=scheduler, steps=4, guidance=3.0, seed=1, batch_size=2), a)
    b = generate(model, prompts, scheduler=scheduler, steps=4, guidance=1.0, seed=1, batch_size=2)
    assert not torch.equal(a, b)
    emb = torch.randn(2, 64)
    assert generate(model, image_embeddings=emb, steps=2, scheduler=scheduler).shape == (2, 3, 16, 16)


def test_load_uses_ema_weights_by_default(trained_ckpt: Path) -> None:
    raw = load_stage1(trained_ckpt, ema=False)
    ema = load_stage1(trained_ckpt)
    state = torch.load(trained_ckpt, weights_only=False)
    w = "unet.net.conv_in.weight"
    torch.testing.assert_close(ema.model.state_dict()[w], state["ema"]["shadow"][w])
    torch.testing.assert_close(raw.model.state_dict()[w], state["state_dict"]["model." + w])


def test_sample_command_writes_grid_and_files(trained_ckpt: Path, tmp_path: Path) -> None:
    sample_main(["--ckpt", str(trained_ckpt), "--prompt", "a plate with a scratch", "--prompt", "a fabric",
                 "--num-per-prompt", "2", "--scheduler", "ddim", "--steps", "3", "--guidance", "2", "--seed", "0",
                 "--out", str(tmp_path), "--device", "cpu"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["000000.png", "000001.png", "000002.png", "000003.png", "grid.png", "prompts.jsonl"]
    assert Image.open(tmp_path / "grid.png").size == (32, 32)
    assert json.loads((tmp_path / "prompts.jsonl").read_text().splitlines()[3])["prompt"] == "a fabric"


def test_synthesize_defects_writes_mvtec_layout_and_manifest(trained_ckpt: Path, tmp_path: Path) -> None:
    model = load_stage1(trained_ckpt).model
    manifest = synthesize_defects(model, tmp_path, ["plate", "fabric"], ["scratch", "hole"], per_class=3,
                                  normal_per_object=3, steps=2, scheduler="dpm", batch_size=18)
    assert (tmp_path / "plate" / "test" / "scratch" / "001.png").is_file()
    assert (tmp_path / "fabric" / "train" / "good" / "000.png").is_file()
    records = ManifestReader(manifest).records()
    assert len(records) == 2 * (2 * 3 + 3)
    assert {r.defect_type for r in records} == {"good", "scratch", "hole"}
    # the common DataModule serves it (image labels only: generated images have no masks)
    from common.data import DefectDataModule

    dm = DefectDataModule(ManifestReader(manifest), image_size=16, batch_size=4, num_workers=0, split="random")
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape[1:] == (3, 16, 16) and set(dm.vocabulary) == {"good", "scratch", "hole"}


def test_fid_and_is_from_the_common_metrics() -> None:
    class Feat(torch.nn.Module):  # stands in for Inception (no weights offline)
        def __init__(self, out: int) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.float().mean((2, 3)))

    torch.manual_seed(0)
    real = torch.rand(16, 3, 16, 16)
    same = generation_metrics(real.clone(), real, feature=Feat(4), is_feature=Feat(5), splits=2)
    far = generation_metrics((real * 0.2).clamp(0, 1), real, feature=Feat(4), is_feature=Feat(5), splits=2)
    assert set(same) == {"fid", "is_mean", "is_std"}
    assert abs(same["fid"]) < 1e-3 < far["fid"]
    with pytest.raises(ValueError, match="inception_weights"):
        generation_metrics(real, real)


@pytest.mark.parametrize("preset", ["stage1_fsdp", "stage1_multinode"])
def test_scale_out_presets_parse_and_build_their_strategy(preset: str) -> None:
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy

    from common.config import instantiate, load_config

    path = str(REPO / "configs" / "diffdefect" / f"{preset}.yaml")
    with pytest.raises(SystemExit) as e:  # the real CLI parser, as `lightning fit --config` would
        from common.cli import DefectCLI

        DefectCLI(args=["fit", "--config", TINY_CONFIGS[0], "--config", path, "--print_config"])
    assert e.value.code == 0
    cfg = load_config([TINY_CONFIGS[0], path])
    strategy = instantiate(cfg["trainer"]["strategy"], Strategy)
    if preset == "stage1_fsdp":
        assert isinstance(strategy, FSDPStrategy) and strategy.kwargs["use_orig_params"] is True
        assert cfg["data"]["init_args"]["batch_size"] * cfg["trainer"]["devices"] == 256
    else:
        assert isinstance(strategy, DDPStrategy)
        t = cfg["trainer"]
        assert cfg["data"]["init_args"]["batch_size"] * t["devices"] * t["num_nodes"] * t["accumulate_grad_batches"] == 256


def test_switches_bf16_channels_last_and_checkpointing_train_on_cpu(demo_manifest: Path) -> None:
    module = Stage1Module(tiny_model(), channels_last=True, gradient_checkpointing=True, ema_decay=0.99)
    assert module.model.channels_last and module.model.unet.net.is_gradient_checkpointing
    data = ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=4, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", fast_dev_run=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    assert trainer.global_step == 2 and module.ema.num_updates == 2
    assert all(torch.isfinite(p).all() for p in module.model.trainable_parameters())
    assert module.model.unet.net.conv_in.weight.dtype == torch.float32  # fp32 master weights


def test_generate_with_the_sequence_context(tmp_path: Path) -> None:
    from common.encoders.clip_text import CLIPTextEncoder, tiny_clip_text_model
    from diffdefect import ConditioningMixer, Stage1Model

    base = tiny_model()
    text = CLIPTextEncoder(tiny_clip_text_model(tmp_path / "clip"), max_length=8)
    model = Stage1Model(base.unet, base.vae, text, base.image_encoder, base.captioner,
                        conditioning=ConditioningMixer(cfg_dropout=0.1, context="sequence"))
    out = generate(model, ["a plate with a scratch", "a fabric"], steps=2, guidance=2.0)
    assert out.shape == (2, 3, 16, 16)
    assert generate(model, image_embeddings=torch.randn(1, 64), steps=2, guidance=2.0).shape == (1, 3, 16, 16)


def test_sample_command_fid_needs_local_inception_weights(trained_ckpt: Path, demo_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inception_weights"):
        sample_main(["--ckpt", str(trained_ckpt), "--prompt", "a plate", "--steps", "1", "--out", str(tmp_path),
                     "--device", "cpu", "--real", str(demo_root)])
