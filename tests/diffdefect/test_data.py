"""ImageTextDataModule (manifest and shards, pixels and latents) and the latent precompute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.config import load_config
from common.data.image_text import ImageTextBatch, ImageTextDataModule
from diffdefect import DiffusionUNet, ImplicitCaptioner, Stage1Model
from diffdefect.stage1.loss import Stage1Loss
from diffdefect.stage1.precompute import encoders_from_config, main, precompute
from tests.diffdefect.conftest import TINY_CONFIGS


def test_manifest_pixels_batches(demo_manifest: Path) -> None:
    dm = ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=5, num_workers=0, val_fraction=0.2)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, ImageTextBatch) and len(batch) == 5
    assert batch.image.shape == (5, 3, 16, 16) and 0 <= batch.image.min() and batch.image.max() <= 1
    assert batch.has_text.all() and all(isinstance(c, str) for c in batch.caption)
    train_keys = {k for b in dm.train_dataloader() for k in b.key}
    val_keys = {k for b in dm.val_dataloader() for k in b.key}
    assert len(train_keys) + len(val_keys) == 24 and not train_keys & val_keys
    # order is a function of (seed, epoch)
    again = ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=5, num_workers=0, val_fraction=0.2)
    assert [b.key for b in again.train_dataloader()] == [b.key for b in dm.train_dataloader()]
    assert ImageTextDataModule(str(demo_manifest)).image_size == 512  # the paper's resolution by default


def test_latents_mode_needs_shards(demo_manifest: Path) -> None:
    with pytest.raises(ValueError, match="latents"):
        ImageTextDataModule(str(demo_manifest), mode="latents", num_workers=0).train_dataloader()


@pytest.fixture(scope="module")
def encoded(demo_manifest: Path, tmp_path_factory) -> tuple[Path, Stage1Model]:
    """Latent shards (float32) and a tiny model sharing the frozen encoders that wrote them."""
    vae, text, image, tokens = encoders_from_config(load_config(TINY_CONFIGS))
    assert not tokens
    out = tmp_path_factory.mktemp("latents")
    precompute(str(demo_manifest), out, vae, text, image, image_size=16, batch_size=8, num_workers=0,
               maxcount=10, dtype="float32")
    torch.manual_seed(0)
    model = Stage1Model(DiffusionUNet("tiny"), vae, text, image, ImplicitCaptioner(64, 32, 32))
    return out, model


def test_precompute_command_writes_indexed_shards(demo_manifest: Path, tmp_path: Path, capsys) -> None:
    main(["--config", TINY_CONFIGS[0], "--config", TINY_CONFIGS[1], "--source", str(demo_manifest),
          "--out", str(tmp_path), "--image-size", "16", "--batch-size", "8", "--num-workers", "0", "--maxcount", "10",
          "--device", "cpu"])
    assert "wrote 24 precomputed samples" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shard-000000.tar", "shard-000001.tar",
                                                          "shard-000002.tar"]
    latent_shards = tmp_path
    dm = ImageTextDataModule(str(latent_shards), mode="latents", batch_size=8, num_workers=0, shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch.image is None
    assert batch.latent_moments.shape == (8, 8, 8, 8)  # 2 x 4 channels, 8x8 latents of 16-px images
    assert batch.text_embedding.shape == (8, 32) and batch.image_embedding.shape == (8, 64)
    assert batch.has_text.all() and batch.caption[0]


def test_precomputed_latents_give_the_same_loss_as_pixels(demo_manifest: Path, encoded) -> None:
    latent_shards, model = encoded
    loss = Stage1Loss()
    pixels = ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=8, num_workers=0, shuffle=False)
    latents = ImageTextDataModule(str(latent_shards), mode="latents", batch_size=8, num_workers=0, shuffle=False)
    for pb, lb in zip(pixels.train_dataloader(), latents.train_dataloader(), strict=True):
        assert pb.caption == lb.caption
        a = loss(model(pb, torch.Generator().manual_seed(7)))
        b = loss(model(lb, torch.Generator().manual_seed(7)))
        for k in ("diff", "imp", "total"):
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_float16_shards_stay_close(demo_manifest: Path, encoded, tmp_path: Path) -> None:
    _, model = encoded
    precompute(str(demo_manifest), tmp_path, model.vae, model.text_encoder, model.image_encoder, image_size=16,
               batch_size=8, num_workers=0, dtype="float16")
    pb = next(iter(ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=8, num_workers=0,
                                       shuffle=False).train_dataloader()))
    lb = next(iter(ImageTextDataModule(str(tmp_path), mode="latents", batch_size=8, num_workers=0,
                                       shuffle=False).train_dataloader()))
    a = Stage1Loss()(model(pb, torch.Generator().manual_seed(1)))["total"]
    b = Stage1Loss()(model(lb, torch.Generator().manual_seed(1)))["total"]
    torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


def test_pixel_shards_stream_like_the_manifest(demo_manifest: Path, tmp_path: Path) -> None:
    from common.data.readers.manifest import ManifestReader
    from common.data.shards import ShardWriter

    with ShardWriter(tmp_path, maxcount=7) as w:
        for i, rec in enumerate(ManifestReader(demo_manifest).records()):
            w.write({"__key__": f"{i:06d}", "png": rec.image_path.read_bytes(), "txt": rec.caption,
                     "json": {"object": rec.object_name, "defect_type": rec.defect_type}})
    dm = ImageTextDataModule(str(tmp_path), image_size=16, batch_size=6, num_workers=0, shuffle=False)
    shard_images = torch.cat([b.image for b in dm.train_dataloader()])
    ref = ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=6, num_workers=0, shuffle=False)
    torch.testing.assert_close(shard_images, torch.cat([b.image for b in ref.train_dataloader()]))


def test_latent_shards_without_a_vae_give_the_pixel_loss_with_the_sd_scaling_factor(demo_manifest: Path,
                                                                                     tmp_path: Path) -> None:
    """Training on latent shards with no VAE in the process sees the latents pixel training sees: scaled by
    the VAE's ``scaling_factor`` (SD's 0.18215, not the tiny preset's 1.0, so a missing scale shows)."""
    from common.encoders import TimmImage, TinyText
    from common.encoders.vae import FrozenVAE

    vae = FrozenVAE(preset="tiny", scaling_factor=0.18215)
    text, image = TinyText(32), TimmImage("test_vit", image_size=32, layers=[2])
    precompute(str(demo_manifest), tmp_path, vae, text, image, image_size=16, batch_size=8, num_workers=0,
               dtype="float32")
    torch.manual_seed(0)
    pixel_model = Stage1Model(DiffusionUNet("tiny"), vae, text, image, ImplicitCaptioner(64, 32, 32))
    latent_model = Stage1Model(pixel_model.unet, captioner=pixel_model.captioner, scaling_factor=0.18215)
    pb = next(iter(ImageTextDataModule(str(demo_manifest), image_size=16, batch_size=8, num_workers=0,
                                       shuffle=False).train_dataloader()))
    lb = next(iter(ImageTextDataModule(str(tmp_path), mode="latents", batch_size=8, num_workers=0,
                                       shuffle=False).train_dataloader()))
    assert pb.caption == lb.caption and lb.image is None
    a = Stage1Loss()(pixel_model(pb, torch.Generator().manual_seed(3)))
    b = Stage1Loss()(latent_model(lb, torch.Generator().manual_seed(3)))
    for k in ("diff", "imp", "total"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="scaling_factor"):
        Stage1Model(pixel_model.unet, captioner=pixel_model.captioner)  # no VAE and no scale: refuse to guess
