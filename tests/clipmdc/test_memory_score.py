"""The memory's PatchCore-style image score and CLIPMDC(memory_image_weight=...)."""

from __future__ import annotations

import torch

from clipmdc.export import OnnxPredictor, export_onnx
from clipmdc.memory import NormalMemory
from clipmdc.memory_score import memory_image_score
from clipmdc.presets import tiny


def _built(weight: float = 0.0):
    torch.manual_seed(0)
    net = tiny(memory=NormalMemory(coreset_ratio=1.0), memory_image_weight=weight).eval()
    normals = torch.rand(4, 3, 64, 64) * 0.2 + 0.4
    with torch.no_grad():
        net.memory.build([(net.image_encoder(normals).tokens, torch.arange(4))])
    return net, normals


def test_score_is_patchcore_reweighted_max_distance() -> None:
    net, normals = _built()
    odd = normals.clone()
    odd[:, :, 20:40, 20:40] = torch.rand(4, 3, 20, 20)
    with torch.no_grad():
        seen = memory_image_score(net.memory, net.image_encoder(normals).tokens)
        new = memory_image_score(net.memory, net.image_encoder(odd).tokens)
        # reference: the distance of the most anomalous patch to its nearest bank entry, re-weighted (PatchCore)
        feats = net.memory.features(net.image_encoder(odd).tokens).flatten(2).transpose(1, 2)[0]  # (N, C)
        d = torch.cdist(feats, net.memory.bank)  # (N, M)
        p = d.min(1).values.argmax()
        m = d[p].argmin()
        support = torch.cdist(net.memory.bank[m][None], net.memory.bank)[0].topk(9, largest=False).indices
        w = 1 - torch.cdist(feats[p][None], net.memory.bank[support])[0].softmax(0)[0]
        ref = w * d[p, m] / net.memory.scale
    assert torch.allclose(seen, torch.zeros(4), atol=1e-3)  # every patch is in the (full) bank
    assert (new > 0.1).all() and torch.allclose(new[0], ref, rtol=1e-4, atol=1e-5)
    ids = torch.arange(4)
    with torch.no_grad():  # leave-one-image-out: an image's own entries do not count
        assert (memory_image_score(net.memory, net.image_encoder(normals).tokens, exclude=ids) > 0).all()


def test_weight_moves_only_the_image_score_and_exports(tmp_path) -> None:
    base, _ = _built(0.0)
    net, normals = _built(4.0)
    x = normals[:2].clone()
    x[:, :, 10:30, 10:30] = 1.0
    with torch.no_grad():
        a, b = base(x), net(x)
        mem = memory_image_score(net.memory, net.image_encoder(x).tokens)
    assert torch.allclose(b.image_score, a.image_score + 4.0 * (mem - 1.0), atol=1e-5)
    assert torch.equal(a.anomaly_map, b.anomaly_map)
    out = OnnxPredictor(export_onnx(net, tmp_path / "m.onnx", image_size=64))(x.numpy())
    assert abs(float(out["image_score"][0]) - float(b.image_prob[0])) < 1e-4
