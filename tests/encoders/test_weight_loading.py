"""Real weights, offline: EfficientNet-Lite0 from its package on timm, open_clip from a local checkpoint."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from common.encoders.backbone import PACKAGE_WEIGHTS, TimmBackbone
from common.encoders.efficientnet import (
    MEAN,
    STD,
    efficientnet_lite0_state_dict,
    load_efficientnet_lite0_weights,
    package_weights_path,
)
from common.encoders.image import OpenCLIPImage
from common.encoders.open_clip_loader import load_open_clip, save_open_clip
from common.encoders.text import OpenCLIPText


@pytest.mark.parametrize("architecture", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_efficientnet_lite0_strict_load_and_chelsea_is_a_cat(architecture: str) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    source = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model(architecture, pretrained=False)
    mapped = efficientnet_lite0_state_dict()
    assert len(mapped) == len(source) == len(model.state_dict())
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in mapped.items():
        assert model.state_dict()[k].shape == v.shape

    img = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255.0  # (1, 3, 300, 451)
    x = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = model.eval()(x).softmax(-1).topk(5).indices[0].tolist()
    assert any(281 <= c <= 285 for c in top5), top5  # tabby/tiger/Persian/Siamese/Egyptian cat
    assert 281 <= top5[0] <= 285


def test_package_weights_on_features_model_and_backbone() -> None:
    feats = timm.create_model("efficientnet_lite0", features_only=True, out_indices=(1, 2))
    load_efficientnet_lite0_weights(feats)  # strict, head keys dropped
    full = efficientnet_lite0_state_dict()
    assert torch.equal(feats.state_dict()["conv_stem.weight"], full["conv_stem.weight"])
    bb = TimmBackbone("efficientnet_lite0", out_indices=(1, 2), weights=PACKAGE_WEIGHTS)
    assert torch.equal(bb.model.conv_stem.weight, full["conv_stem.weight"])
    assert torch.allclose(bb.mean.flatten(), torch.tensor(MEAN))


def test_open_clip_local_checkpoint_round_trip(tmp_path, tiny_clip_name: str) -> None:
    torch.manual_seed(0)
    original = load_open_clip(tiny_clip_name)  # random init
    path = save_open_clip(original, tmp_path / "open_clip_pytorch_model.bin")
    torch.manual_seed(1)
    loaded = load_open_clip(tiny_clip_name, pretrained=str(path))  # the path users take with a download
    ref, got = original.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)

    x = torch.rand(2, 3, 32, 32)
    a_img = OpenCLIPImage(tiny_clip_name, clip_model=original, layers=(1, 2))
    b_img = OpenCLIPImage(tiny_clip_name, pretrained=str(path), layers=(1, 2))
    fa, fb = a_img(x), b_img(x)
    assert torch.equal(fa.embedding, fb.embedding)
    assert all(torch.equal(s, t) for s, t in zip(fa.tokens, fb.tokens, strict=True))
    texts = ["a photo of a bottle with scratch."]
    a_txt = OpenCLIPText(tiny_clip_name, clip_model=original)
    b_txt = OpenCLIPText(tiny_clip_name, pretrained=str(path))
    assert torch.equal(a_txt.encode(texts), b_txt.encode(texts))
