"""Image encoders and the trainable backbone: shapes, normalisation, frozen behaviour."""

from __future__ import annotations

import torch

from common.encoders.backbone import TimmBackbone
from common.encoders.image import OpenCLIPImage, TimmImage
from common.encoders.open_clip_loader import load_open_clip


def test_timm_image_tokens_and_embedding() -> None:
    enc = TimmImage("test_vit", layers=(1, 3, 5), model_kwargs={"dynamic_img_size": True})
    feats = enc(torch.rand(2, 3, 64, 64))
    assert [t.shape for t in feats.tokens] == [torch.Size([2, 64, 4, 4])] * 3
    assert feats.embedding.shape == (2, 64)
    assert enc.token_dims == [64, 64, 64] and enc.embed_dim == 64
    assert not feats.embedding.requires_grad
    assert enc.state_dict() == {}


def test_timm_image_cnn_multiscale() -> None:
    enc = TimmImage("test_efficientnet", layers=(2, 3, 4))
    feats = enc(torch.rand(1, 3, 64, 64))
    assert [tuple(t.shape[-2:]) for t in feats.tokens] == [(8, 8), (4, 4), (2, 2)]
    assert enc.token_dims == [t.shape[1] for t in feats.tokens]


def test_open_clip_image_tokens_projected_to_joint_space(tiny_clip_name: str) -> None:
    model = load_open_clip(tiny_clip_name)
    enc = OpenCLIPImage(tiny_clip_name, layers=(0, 2), clip_model=model)
    x = torch.rand(2, 3, 48, 48)  # resized to the model's 32 px
    feats = enc(x)
    assert [t.shape for t in feats.tokens] == [torch.Size([2, 32, 4, 4])] * 2  # width 64 -> embed 32
    assert feats.embedding.shape == (2, 32)
    ref = model.encode_image(enc.preprocess(x))
    assert torch.allclose(feats.embedding, ref, atol=1e-5)
    raw = OpenCLIPImage(tiny_clip_name, layers=(0,), project_tokens=False, clip_model=model)
    assert raw.token_dims == [64]


def test_backbone_trainable_multiscale_and_pruned() -> None:
    bb = TimmBackbone("test_efficientnet", out_indices=(1, 2))
    out = bb(torch.rand(2, 3, 64, 64))
    assert [o.shape[1] for o in out] == bb.channels and bb.reductions == [4, 8]
    assert [tuple(o.shape[-2:]) for o in out] == [(16, 16), (8, 8)]
    sum(o.mean() for o in out).backward()
    assert all(p.grad is not None for p in bb.parameters() if p.requires_grad)  # no unused (DDP-safe)
