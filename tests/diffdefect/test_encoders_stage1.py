"""The frozen AutoencoderKL and CLIP text-encoder wrappers (local-folder loading, tiny models saved to tmp)."""

from __future__ import annotations

import shutil

import pytest
import torch

from common.encoders.clip_text import CLIPTextEncoder, tiny_clip_text_model, write_clip_tokenizer
from common.encoders.vae import FrozenVAE


def test_tiny_vae_shapes_scaling_and_round_trip(tmp_path) -> None:
    vae = FrozenVAE(preset="tiny")
    assert vae.downsample == 2 and vae.latent_channels == 4 and vae.scaling_factor == 1.0
    img = torch.rand(2, 3, 16, 16)
    moments = vae.encode_moments(img)
    assert moments.shape == (2, 8, 8, 8)
    mean = vae.sample_latents(moments, sample=False)
    torch.testing.assert_close(mean, moments[:, :4])
    a = vae.sample_latents(moments, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, vae.sample_latents(moments, torch.Generator().manual_seed(0)))
    assert vae.decode(a).shape == (2, 3, 16, 16)
    assert vae.state_dict() == {} and not any(p.requires_grad for p in vae.parameters())
    vae.save_pretrained(tmp_path / "vae")
    again = FrozenVAE(pretrained=tmp_path / "vae")
    torch.testing.assert_close(again.encode_moments(img), moments)
    assert again.scaling_factor == 1.0
    # an SD-style repo: the VAE in a sub-folder, scaling factor from its config
    sd = FrozenVAE(pretrained=tmp_path, subfolder="vae", scaling_factor=0.18215)
    assert sd.scaling_factor == 0.18215
    with pytest.raises(ValueError, match="unknown VAE preset"):
        FrozenVAE(preset="xl")


def test_sd_vae_architecture_on_meta_device() -> None:
    from diffusers import AutoencoderKL

    from common.encoders.vae import SD_VAE_CONFIG

    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE_CONFIG)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_clip_tokenizer_matches_openai_ids(tmp_path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path)))
    # ids of openai/clip-vit-large-patch14's tokenizer for this text
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_clip_text_encoder_from_a_local_folder(tmp_path) -> None:
    folder = tiny_clip_text_model(tmp_path / "clip", hidden_size=32)
    enc = CLIPTextEncoder(folder, max_length=12)
    out = enc.encode_text(["a metal plate with a scratch", "hole"])
    assert out.pooled.shape == (2, 32) and out.tokens.shape == (2, 12, 32)
    assert out.mask.sum(1).tolist() == [8, 3]
    unit = enc.encode(["a metal plate with a scratch"])
    torch.testing.assert_close(unit, torch.nn.functional.normalize(out.pooled[:1], dim=-1))
    assert enc.state_dict() == {} and not any(p.requires_grad for p in enc.parameters())
    # a model folder without tokenizer files: CLIP's BPE vocabulary from open_clip is used
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in folder.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, bare / f.name)
    torch.testing.assert_close(CLIPTextEncoder(bare, max_length=12).encode_text(["hole"]).pooled, out.pooled[1:])
