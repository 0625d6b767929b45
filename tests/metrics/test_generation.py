"""FID / IS wrappers: clear errors naming ``inception_weights`` (no download) and the math vs scipy/numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from common.metrics import FID, InceptionScore


class TinyFeatures(nn.Module):
    """Fixed random projection of flattened 3x8x8 images to 6 float64 features (stands in for Inception)."""

    num_features = 6

    def __init__(self, out: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(3 * 8 * 8, out, generator=g, dtype=torch.float64) / 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double() @ self.w


def reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("cls", [FID, InceptionScore])
def test_missing_setting_names_it(cls):
    with pytest.raises(ValueError, match="inception_weights"):
        cls()
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        cls(inception_weights="/nonexistent/pt_inception-2015-12-05.pth")


def _random_inception_weights(path, monkeypatch) -> None:
    """Saves a randomly initialised torch-fidelity Inception-v3 state dict (stands in for the real file)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:  # build without loading anything: no file, no download
        m.setattr(fe.torch, "load", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="x")
    torch.save(net.state_dict(), path)


def test_inception_weights_load_from_a_local_file(tmp_path, monkeypatch):
    """The users' path: FID/IS built from a local weights file (a random one here), run on images."""
    weights = tmp_path / "pt_inception-2015-12-05.pth"
    _random_inception_weights(weights, monkeypatch)
    fid = FID(inception_weights=str(weights))
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(4, 3, 64, 64, generator=g), torch.rand(4, 3, 64, 64, generator=g) * 0.5
    fid.update(real, real=True)
    fid.update(fake, real=False)
    value = float(fid.compute())
    assert np.isfinite(value) and value > 0
    score = InceptionScore(inception_weights=str(weights), splits=1)
    score.update(fake)
    assert np.isfinite(float(score.compute()["is_mean"]))


def test_fid_math_with_custom_features():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(40, 3, 8, 8, generator=g)
    fake = (torch.rand(50, 3, 8, 8, generator=g) * 0.8 + 0.15) ** 1.5
    net = TinyFeatures()
    fid = FID(feature=net)  # no weights needed with a custom extractor
    for batch in real.split(16):
        fid.update(batch, real=True)
    for batch in fake.split(16):
        fid.update(batch, real=False)
    ref = reference_fid(net(real).numpy(), net(fake).numpy())
    assert ref > 0.01
    assert float(fid.compute()) == pytest.approx(ref, rel=1e-6, abs=1e-9)
    fid.reset()  # real statistics are cleared by default
    fid.update(real[:20], real=True)
    fid.update(real[20:], real=False)
    assert float(fid.compute()) == pytest.approx(
        reference_fid(net(real[:20]).numpy(), net(real[20:]).numpy()), rel=1e-6, abs=1e-9
    )


def test_inception_score_math_with_custom_logits():
    g = torch.Generator().manual_seed(2)
    imgs = torch.rand(30, 3, 8, 8, generator=g)
    net = TinyFeatures(out=5)
    metric = InceptionScore(feature=net, splits=1, normalize=False)
    metric.update(imgs[:10])
    metric.update(imgs[10:])
    out = metric.compute()
    logits = net(imgs).numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p.mean(0, keepdims=True)
    ref = float(np.exp((p * (np.log(p) - np.log(py))).sum(1).mean()))
    assert float(out["is_mean"]) == pytest.approx(ref, rel=1e-6)
    assert ref > 1.0
    assert float(out["is_std"]) == 0.0  # one split: defined, not NaN


def test_fd_lite0_is_frechet_distance_on_frozen_lite0_features() -> None:
    from common.metrics import FrechetDistanceLite0
    from common.metrics.generation import Lite0Features

    g = torch.Generator().manual_seed(0)
    real = torch.rand(12, 3, 32, 32, generator=g)
    fake = (torch.rand(12, 3, 32, 32, generator=g) * 0.4 + 0.6)
    metric = FrechetDistanceLite0(image_size=64)
    assert FrechetDistanceLite0.name == "FD-Lite0"
    assert not any(p.requires_grad for p in metric.parameters())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    value = float(metric.compute())
    feats = Lite0Features(64)
    assert feats.num_features == 1280 and not feats.train().net.training  # frozen BatchNorm
    expected = reference_fid(feats(real).double().numpy(), feats(fake).double().numpy())
    assert value == pytest.approx(expected, rel=1e-3)
    same = FrechetDistanceLite0(image_size=64)
    same.update(real, real=True)
    same.update(real, real=False)
    assert abs(float(same.compute())) < 1e-2 * value


def test_frechet_distance_low_rank_formula_matches_sqrtm() -> None:
    from common.metrics.generation import frechet_distance

    rng = np.random.default_rng(0)
    for n1, n2, d in ((5, 7, 30), (40, 30, 12)):  # fewer samples than dimensions, and more
        f1, f2 = rng.normal(size=(n1, d)), rng.normal(0.3, 1.5, size=(n2, d))
        assert float(frechet_distance(torch.from_numpy(f1), torch.from_numpy(f2))) == pytest.approx(
            reference_fid(f1, f2), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3))
