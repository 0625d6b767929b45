"""How much do frozen features know about defects? A linear probe of defect pixels per feature source.

``python -m benchmarks.feature_probe`` (part of ``make benchmark``; ``--quick`` for a smoke run). Needs
``../shared/data/magnetic_tile`` (skipped with a message otherwise).

Why: the stage-2 benchmark trains a whole Mask2Former head on each extractor, so a weak result can come from the
features or from the head's training. A logistic regression on single feature vectors isolates the features:
each source's levels are brought to one grid (half the image side, bilinear), a probe is fitted on pixels of
training images with defects (every defect pixel, an equal number of sampled normal ones, standardised
features, L-BFGS on the logistic loss with a small L2 penalty) and scored by pixel AUROC (:mod:`common.metrics`)
on the test images with defects. Sources, all frozen, on the same seeded Magnetic Tile split as
:mod:`benchmarks.stage2`:

* ``pixels``: the RGB image itself (the floor every learned feature should pass);
* ``vae_random`` / ``vae_trained``: the tiny VAE's latent mean, random weights vs trained on the training images
  (:func:`benchmarks.stage2.train_vae`);
* ``diffusion_random_vae`` / ``diffusion_trained_vae``: :class:`~diffdefect.stage2.extractor.DiffusionFeatures`
  of the small stage-1 U-Net of :mod:`benchmarks.stage2` (untrained: what stage-1 training adds is the stage-2
  benchmark's control) on each VAE;
* ``efficientnet``: :class:`~common.encoders.image.EfficientNetFeatures` (ImageNet Lite0, four levels).

Writes ``benchmarks/results/feature_probe.json`` (``feature_probe_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import _common
from benchmarks import stage2 as s2

FULL = {**s2.FULL, "train_images": 120, "test_images": 80, "normal_pixels": 20000}
QUICK = {**s2.QUICK, "train_images": 6, "test_images": 4, "normal_pixels": 500}


def load_pairs(records: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, size, size)`` in [0, 1] and their binary defect masks ``(N, size, size)`` (nearest
    resize), read by the DataModule's loader (:func:`common.data.io.load_sample`: mask thresholds, size checks)."""
    from common.data.image_text import resize_image
    from common.data.io import load_sample

    images, masks = [], []
    for r in records:
        sample = load_sample(r)
        images.append(resize_image(sample.image, size))
        m = torch.zeros(size, size) if sample.mask is None else torch.from_numpy(sample.mask).float()
        masks.append(F.interpolate(m[None, None], size=(size, size), mode="nearest")[0, 0])
    return torch.stack(images), torch.stack(masks)


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 100) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logistic regression ``(N, C) -> score`` on standardised features (by hand: a few lines of L-BFGS, which
    keeps the benchmark free of scikit-learn, a dev-only dependency)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda q: ((q - mu) / sd) @ w + b


def probe_auroc(train: list[torch.Tensor], test: list[torch.Tensor], m_train: torch.Tensor, m_test: torch.Tensor,
                normal_pixels: int, seed: int = 0) -> float:
    """Pixel AUROC of a probe fitted on ``train`` levels ``[(N, C_l, h_l, w_l)]`` and scored on ``test``."""
    from common.metrics.anomaly import PixelAUROC

    grid = m_train.shape[-1]

    def flat(levels: list[torch.Tensor]) -> torch.Tensor:  # (N * grid^2, sum C_l)
        up = [F.interpolate(lv, size=(grid, grid), mode="bilinear", align_corners=False) for lv in levels]
        return torch.cat(up, 1).permute(0, 2, 3, 1).reshape(-1, sum(lv.shape[1] for lv in levels))

    x, y = flat(train), m_train.reshape(-1)
    pos = y.nonzero().squeeze(1)
    neg = (y == 0).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    neg = neg[torch.randperm(len(neg), generator=g)[:normal_pixels]]
    idx = torch.cat([pos, neg])
    probe = fit_probe(x[idx], y[idx])
    scores = probe(flat(test)).reshape(m_test.shape)  # (N, grid, grid)
    metric = PixelAUROC()
    metric.update(scores, m_test)
    return float(metric.compute())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.feature_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    p.add_argument("--data-root", default=str(s2.SHARED), help="folder holding magnetic_tile/")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    cfg = dict(QUICK if a.quick else FULL)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)  # the random inits not seeded on their own (the implicit captioner) are the same every run
    root = Path(a.data_root) / "magnetic_tile"
    if not root.is_dir():
        print(f"feature_probe benchmark: {root} not found, skipping")
        return {}
    from common.encoders import MiniLMText, TimmImage
    from common.encoders.vae import FrozenVAE
    from diffdefect import (
        DiffusionFeatures,
        DiffusionUNet,
        EfficientNetFeatures,
        ImplicitCaptioner,
        Stage1Model,
    )

    size = cfg["image_size"]
    splits = s2.datamodule("magnetic_tile", root, {**cfg, "shots": None, "good": None, "test_per_class": None}
                           ).split_records()
    sets = {}
    for name, n in (("train", cfg["train_images"]), ("test", cfg["test_images"])):
        images, masks = load_pairs(s2.spread([r for r in splits[name] if r.mask_path is not None], n), size)
        sets[name] = (images, F.adaptive_max_pool2d(masks[:, None], size // 2)[:, 0])  # masks (N, G, G)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        vae_trained, vae_summary = s2.train_vae(splits["train"], cfg, Path(tmp))
    random_vae = FrozenVAE(preset="tiny", scaling_factor=1.0)
    random_vae.scaling_factor = s2.latent_scale(random_vae, sets["train"][0][:64])
    text = MiniLMText()
    image_encoder = TimmImage("efficientnet_lite0", weights="efficientnet_lite0_package", layers=[4])

    def maps(encoder: Any) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        return lambda x: encoder(x, embedding=False).tokens  # the frozen-feature interface's maps

    def diffusion(vae: FrozenVAE) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        unet = DiffusionUNet("tiny", overrides={**s2.SMALL_UNET, "sample_size": size // 2}, seed=0)
        captioner = ImplicitCaptioner(image_encoder.embed_dim, 384, 256)
        return maps(DiffusionFeatures(stage1=Stage1Model(unet, vae, text, image_encoder, captioner).eval(),
                                      timestep=50, blocks="up", vae_levels=0))

    def latents(vae: FrozenVAE) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        return lambda x: [vae.sample_latents(vae.encode_moments(x), sample=False)]

    sources: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
        "pixels": lambda x: [x],
        "vae_random": latents(random_vae),
        "vae_trained": latents(vae_trained),
        "diffusion_random_vae": diffusion(random_vae),
        "diffusion_trained_vae": diffusion(vae_trained),
        "efficientnet": maps(EfficientNetFeatures("efficientnet_lite0", weights="efficientnet_lite0_package")),
    }
    results = {}
    for name, extract in sources.items():
        with torch.no_grad():
            feats = {k: extract(x) for k, (x, _) in sets.items()}
        auroc = probe_auroc(feats["train"], feats["test"], sets["train"][1], sets["test"][1], cfg["normal_pixels"])
        results[name] = {"pixel_auroc": auroc, "channels": sum(f.shape[1] for f in feats["train"])}
        print(f"{name}: probe P-AUROC {auroc:.4f}", flush=True)
    payload = {
        "config": {key: cfg[key] for key in ("image_size", "vae_steps", "train_images", "test_images",
                                             "normal_pixels")} | {"dataset": "magnetic_tile", "grid": size // 2,
                                                                  "threads": a.threads, "quick": a.quick},
        "vae": vae_summary,
        "results": results,
        "seconds": time.perf_counter() - t0,
        "notes": ["one seed, one split; a linear probe measures what single feature vectors separate, not what a "
                  "trained head can make of their neighbourhoods"],
    }
    path = _common.write_results("feature_probe_quick" if a.quick else "feature_probe", payload)
    _common.print_table(f"linear probe of defect pixels on Magnetic Tile -> {path.name}", ["source", "channels",
                        "P-AUROC"], [[k, v["channels"], v["pixel_auroc"]] for k, v in results.items()])
    return payload


if __name__ == "__main__":
    main()
