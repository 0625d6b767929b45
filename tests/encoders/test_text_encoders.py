"""Text encoders: TinyText (tests), MiniLM from the offline package, open_clip text tower."""

from __future__ import annotations

import open_clip
import pytest
import torch

from common.encoders.open_clip_loader import load_open_clip
from common.encoders.text import MiniLMText, OpenCLIPText, TinyText


def test_tiny_text_deterministic_normalised_and_distinct() -> None:
    texts = ["a photo of a bottle", "a photo of a bottle with scratch", "a photo of a bottle with dent"]
    a, b = TinyText(seed=3).encode(texts), TinyText(seed=3).encode(texts)
    assert a.shape == (3, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3))
    sims = a @ a.T
    assert (sims - torch.eye(3)).abs().max() < 0.999  # all different
    assert not torch.equal(TinyText(seed=4).encode(texts), a)


def test_encode_inside_inference_mode_gives_a_normal_tensor() -> None:
    enc = TinyText()
    with torch.inference_mode():
        emb = enc.encode(["scratch"])
    assert not emb.is_inference()
    w = torch.ones(32, requires_grad=True)
    (emb @ w).sum().backward()  # usable in training afterwards


def test_text_encoder_weights_frozen_and_unsaved() -> None:
    enc = TinyText()
    assert enc.state_dict() == {}
    assert not any(p.requires_grad for p in enc.parameters())


def test_minilm_offline_384d_and_semantic() -> None:
    enc = MiniLMText()
    assert enc.dim == 384
    emb = enc.encode(
        ["a scratch on a metal surface", "the metal plate has a scratch", "the weather is sunny at the beach"]
    )
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert sims[0, 1] > sims[1, 2] + 0.2


def test_open_clip_text_matches_open_clip_encode_text(tiny_clip_name: str) -> None:
    model = load_open_clip(tiny_clip_name)
    enc = OpenCLIPText(tiny_clip_name, clip_model=model)
    texts = ["a photo of a flawless bottle.", "a photo of a bottle with scratch."]
    ref = model.encode_text(open_clip.get_tokenizer(tiny_clip_name)(texts), normalize=True)
    assert enc.dim == 32
    assert torch.allclose(enc.encode(texts), ref, atol=1e-6)
    assert "visual" not in dict(enc.named_modules()).keys()  # text tower only


def test_open_clip_missing_checkpoint_file_is_a_clear_error(tmp_path, tiny_clip_name: str) -> None:
    with pytest.raises(FileNotFoundError):
        OpenCLIPText(tiny_clip_name, pretrained=str(tmp_path / "nope.pt"))
