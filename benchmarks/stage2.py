"""Stage-2 open vocabulary on real data: diffusion features vs ImageNet EfficientNet-Lite0 features, same head.

``python -m benchmarks.stage2`` (part of ``make benchmark``; ``--quick`` for a smoke run). Needs
``../shared/data/{magnetic_tile,neu_seg}``; a missing dataset is skipped with a message.

Protocol (one run, one seed, CPU-sized; every figure comes from :mod:`common.metrics` through
:class:`~diffdefect.stage2.module.Stage2Module`):

1. Splits: Magnetic Tile, seeded stratified 60/20/20 (``DefectDataModule(split="random")``); NEU-Seg, its own
   train/test splits. Images resized to ``--image-size`` (96 px).
2. Stage 1 (the foundation model), trained once on the image-text manifest of the *training* images of both
   datasets (templated captions from :mod:`common.data.captions`; every class, as IMDD-1M pools these data sets;
   no test image): a small 4-level U-Net (32/64/128/128 channels, cross-attention at the two middle levels,
   6.2M parameters, 384-d context), the real offline encoders (MiniLM text, EfficientNet-Lite0 image embedding
   for the implicit captioner) and the tiny 2x VAE, for ``--stage1-steps`` steps of batch 16. No VAE weights
   can be downloaded here, so the tiny VAE is first trained on the same training images (:func:`train_vae`,
   ``--vae-steps``; ``--vae random`` keeps random weights, the earlier setting) and then frozen, its latent
   scaling factor set to 1 / std of the training latents (:func:`latent_scale`). This is a toy stage 1:
   minutes on a CPU instead of 72 h on 8 H100s.
3. Stage 2, per dataset and per extractor, the same ``small`` Mask2Former head (16 queries, 64-d, FPN), the same
   MiniLM embeddings of the class names, the same split and seed:

   * ``diffusion``: :class:`~diffdefect.stage2.extractor.DiffusionFeatures` of the stage-1 model (t = 50,
     implicit-captioner conditioning, up-block levels at strides 2/4/8/16; ``vae_levels=0`` because the tiny
     VAE's decoder level would sit at stride 1 and quadruple the head's cost);
   * ``efficientnet``: :class:`~common.encoders.image.EfficientNetFeatures` (ImageNet Lite0, strides 4/8/16/32).

   Trained on the base classes only (training images showing a novel class are dropped), tested on all classes
   with the novel ones given only as names. Few-shot: at most ``--shots`` training images per class (the
   paper's 200 is more than Magnetic Tile has: 32-115 per class), and at most ``--good`` defect-free images.
   The test vocabulary is base + novel (NEU-Seg's label list also names an unused ``others`` class: left out).
   Flips only as augmentation, so the feature cache holds (at most four variants per image).
4. Controls: ``diffusion_untrained`` (the same U-Net before stage-1 training: what that training adds) and
   ``efficientnet_captions`` (caption-only supervision, the paper's third regime, on the Lite0 features: class-
   agnostic defect masks named by the nouns of each image's templated caption, plus the grounding loss; these
   data sets have no captions of their own, so the nouns are the class names the templates were given).

Reported per run: mIoU, base / novel IoU, per-class IoU, image accuracy and macro-F1 (class from the
masks), COCO box and mask mAP@0.5 and @0.5:0.95 (boxes from masks), pixel AUROC and AUPRO, wall times; all with
the test vocabulary background + base + novel (generalised zero-shot), and again with background + novel names
only (``novel_only_metrics``: the disjoint protocol; base-class pixels and images are then ignored). Writes
``benchmarks/results/stage2_<dataset>.json`` (``stage2_<dataset>_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import torch

from benchmarks import _common

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS: dict[str, dict[str, Any]] = {
    "magnetic_tile": {"folder": "magnetic_tile", "base": ["blowhole", "break", "uneven"], "novel": ["crack", "fray"],
                      "split": "random"},
    "neu_seg": {"folder": "neu_seg", "base": ["inclusions", "patches"], "novel": ["scratches"], "split": "auto"},
}
FULL = {"image_size": 96, "vae_steps": 400, "vae_kl_weight": 1e-4, "stage1_steps": 250, "stage1_batch": 16,
        "epochs": 30, "shots": 60, "good": 60, "test_per_class": None, "batch": 16}
QUICK = {"image_size": 32, "vae_steps": 2, "vae_kl_weight": 1e-4, "stage1_steps": 2, "stage1_batch": 4,
         "epochs": 1, "shots": 3, "good": 3, "test_per_class": 2, "batch": 4}
SMALL_UNET = {"block_out_channels": (32, 64, 128, 128),
              "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
              "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              "layers_per_block": 1, "cross_attention_dim": 384, "attention_head_dim": 8, "norm_num_groups": 16}


def cap(records: list, per_class: int | None, good: int | None, seed: int = 0) -> list:
    """At most ``per_class`` records per defect type and ``good`` defect-free ones (seeded, deterministic)."""
    import numpy as np

    from common.data.types import NORMAL

    groups: dict[str, list] = {}
    for r in sorted(records, key=lambda r: str(r.image_path)):
        groups.setdefault(r.defect_type, []).append(r)
    out = []
    for i, (name, group) in enumerate(sorted(groups.items())):
        n = good if name == NORMAL else per_class
        if n is not None and len(group) > n:
            keep = np.random.default_rng([seed, i]).choice(len(group), n, replace=False)
            group = [group[k] for k in sorted(keep)]
        out += group
    return sorted(out, key=lambda r: str(r.image_path))


def datamodule(name: str, root: Path, cfg: dict[str, Any]) -> Any:
    """The dataset's DataModule with the capped few-shot train split (and capped test split in quick mode)."""
    from common.data import ClassIdSegReader, DefectDataModule, MagneticTileReader

    reader = MagneticTileReader(root) if name == "magnetic_tile" else ClassIdSegReader(root)
    dm = DefectDataModule(reader, image_size=cfg["image_size"], batch_size=cfg["batch"], num_workers=0,
                          split=DATASETS[name]["split"], seed=0, augment="none", val_fraction=0.1,
                          extra_train_transforms=[A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)],
                          captions="templated")  # the caption-only run's text: these data sets have none
    splits = dm.split_records()
    splits["train"][:] = cap(splits["train"], cfg["shots"], cfg["good"])
    splits["val"][:] = []
    if cfg["test_per_class"] is not None:
        splits["test"][:] = cap(splits["test"], cfg["test_per_class"], cfg["test_per_class"])
    return dm


def spread(records: list, n: int | None) -> list:
    """Up to ``n`` records spread evenly over ``records`` (all of them for ``None``)."""
    step = 1 if n is None else max(1, len(records) // n)
    return records[::step][:n]


def load_images(records: list, size: int, n: int | None = None) -> torch.Tensor:
    """``(N, 3, size, size)`` images in [0, 1] of up to ``n`` records (:func:`spread`)."""
    from common.data.image_text import resize_image
    from common.data.io import read_image

    return torch.stack([resize_image(read_image(r.image_path), size) for r in spread(records, n)])


def latent_scale(vae: Any, images: torch.Tensor) -> float:
    """``1 / std`` of ``vae``'s latent means over ``images`` (SD chose its 0.18215 this way).

    Without it the tiny VAE's latents have a standard deviation far from 1 (near 0.3 for the random one, 0.13
    within an image on Magnetic Tile): the noise at t = 50 (std 0.22) would then drown most of the image.
    """
    with torch.no_grad():
        latents = vae.sample_latents(vae.encode_moments(images), sample=False) / vae.scaling_factor
    return float(1.0 / latents.std().clamp(min=1e-6))


def train_vae(train_records: list, cfg: dict[str, Any], workdir: Path) -> tuple[Any, dict]:
    """Trains the tiny ``AutoencoderKL`` on the training images: the stand-in for SD's pretrained VAE.

    The paper's VAE is SD's, trained on billions of images and frozen; no VAE weights can be downloaded here,
    and a *random* tiny VAE loses much of the image: a linear probe of defect pixels on Magnetic Tile
    (``python -m benchmarks.feature_probe``) scored P-AUROC 0.54 on its latents, 0.65 on the raw pixels and 0.70
    on the latents of this trained one; the diffusion features on top, 0.64 vs 0.79. Loss: L1
    reconstruction plus a small KL term (SD's VAE adds LPIPS and a patch GAN, not needed at this size).
    Written by hand because diffusers ships no VAE training API (only example scripts); a dozen lines.

    Returns:
        The trained VAE, saved with ``save_pretrained`` and loaded back frozen through
        ``FrozenVAE(pretrained=...)`` (its scaling factor set by :func:`latent_scale`), and a summary.
    """
    from diffusers import AutoencoderKL

    from common.encoders.vae import PRESETS, FrozenVAE

    images = load_images(train_records, cfg["image_size"], n=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ae = AutoencoderKL(**PRESETS["tiny"])
        opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for step in range(cfg["vae_steps"]):
            x = images[torch.randint(0, len(images), (cfg["stage1_batch"],), generator=g)] * 2.0 - 1.0
            x = x.flip(-1) if step % 2 else x  # (B, 3, H, W) in [-1, 1]
            posterior = ae.encode(x).latent_dist
            recon = ae.decode(posterior.sample(generator=g)).sample  # (B, 3, H, W)
            l1 = (recon - x).abs().mean()
            loss = l1 + cfg["vae_kl_weight"] * posterior.kl().mean() / x[0].numel()
            opt.zero_grad()
            loss.backward()
            opt.step()
    ae.save_pretrained(workdir / "vae")
    vae = FrozenVAE(pretrained=workdir / "vae", scaling_factor=1.0)
    vae.scaling_factor = latent_scale(vae, images[:64])
    return vae, {"steps": cfg["vae_steps"], "final_l1": float(l1), "seconds": time.perf_counter() - t0,
                 "images": len(images), "kl_weight": cfg["vae_kl_weight"]}


def train_stage1(train_records: list, cfg: dict[str, Any], text_encoder: Any, vae: Any,
                 workdir: Path) -> tuple[Any, Any, dict]:
    """Trains the small stage-1 model on the captioned training images (``vae``: the frozen VAE).

    Returns:
        The trained model, the same model untrained (its initial weights, sharing the frozen encoders: the
        control that isolates what stage-1 training adds) and a summary.
    """
    from common.data.image_text import ImageTextDataModule
    from common.encoders import TimmImage
    from diffdefect import DiffusionUNet, ImplicitCaptioner, Stage1Model, Stage1Module
    from diffdefect.stage1.captions import manifest_entries

    manifest = workdir / "stage1_pairs.jsonl"
    entries = manifest_entries(train_records)
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    latent = cfg["image_size"] // 2
    unet = DiffusionUNet("tiny", overrides={**SMALL_UNET, "sample_size": latent})
    image_encoder = TimmImage("efficientnet_lite0", weights="efficientnet_lite0_package", layers=[4])
    model = Stage1Model(unet, vae, text_encoder, image_encoder, ImplicitCaptioner(image_encoder.embed_dim, 384, 256))
    untrained = Stage1Model(DiffusionUNet("tiny", overrides={**SMALL_UNET, "sample_size": latent}), vae, text_encoder,
                            image_encoder, copy.deepcopy(model.captioner)).eval()  # same seed: same initial U-Net
    module = Stage1Module(model, optimizer=functools.partial(torch.optim.AdamW, lr=3e-4), ema_decay=None)
    data = ImageTextDataModule(str(manifest), image_size=cfg["image_size"], batch_size=cfg["stage1_batch"],
                               num_workers=0, seed=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=cfg["stage1_steps"], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=workdir)
    t0 = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - t0
    trainer.save_checkpoint(workdir / "stage1.ckpt")  # what a later `stage1_checkpoint:` would point to
    loss = float(trainer.callback_metrics.get("train/loss", torch.tensor(float("nan"))))
    params = sum(p.numel() for p in model.unet.parameters())
    return model.eval(), untrained, {"pairs": len(entries), "steps": cfg["stage1_steps"], "batch": cfg["stage1_batch"],
                          "vae_scaling_factor": vae.scaling_factor,
                          "image_size": cfg["image_size"], "unet_parameters": params, "final_loss": loss,
                          "seconds": seconds, "example_caption": entries[0]["caption"] if entries else None}


def logged_test_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """The evaluation figures ``trainer.test`` returns (what Lightning logged), without the ``test/`` prefix and the
    held-out loss terms."""
    from diffdefect.stage2.metrics import LOSS_TERMS

    out = {k.removeprefix("test/"): float(v) for k, v in results[0].items()}
    return {k: v for k, v in out.items() if k not in LOSS_TERMS}


def run_stage2(extractor: Any, dm: Any, spec: dict[str, Any], cfg: dict[str, Any], text_encoder: Any,
               lr: float, supervision: str = "labels") -> dict[str, Any]:
    """Trains the small head on ``extractor`` (base classes) and tests it on all classes (``supervision``: see
    :class:`~diffdefect.stage2.module.Stage2Module`)."""
    from diffdefect import FeatureCache, OpenVocabClassifier, Stage2Model, Stage2Module

    L.seed_everything(0, verbose=False)
    classifier = OpenVocabClassifier(int(text_encoder.dim), text_encoder=text_encoder)
    model = Stage2Model(extractor, head="small", classifier=classifier, cache=FeatureCache())
    module = Stage2Module(model, optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.05),
                          supervision=supervision, train_classes=spec["base"],
                          test_classes=spec["base"] + spec["novel"], data_vocabulary=dm.vocabulary)
    trainer = L.Trainer(accelerator="cpu", max_epochs=cfg["epochs"], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, deterministic=False)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t0
    train_loss = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    t0 = time.perf_counter()
    metrics = logged_test_metrics(trainer.test(module, datamodule=dm, verbose=False))
    test_s = time.perf_counter() - t0
    module.test_classes = list(spec["novel"])  # the disjoint protocol: only the novel names (cached features)
    novel_only = logged_test_metrics(trainer.test(module, datamodule=dm, verbose=False))
    return {"metrics": metrics, "novel_only_metrics": novel_only, "fit_seconds": fit_s, "test_seconds": test_s,
            "head_parameters": sum(p.numel() for p in model.trainable_parameters()),
            "feature_channels": list(extractor.channels), "feature_strides": list(extractor.strides),
            "cache": {"hits": model.cache.hits, "misses": model.cache.misses},
            "last_train_step": train_loss}


def table_row(runs: dict[str, Any], kinds: list[str], label: str, key: str, part: str = "metrics") -> list[Any]:
    """One printed row: the figure of every run, then diffusion - efficientnet."""
    vals = [runs[k][part].get(key, float("nan")) for k in kinds]
    return [label, *vals, vals[0] - vals[1]]


KEYS = ("miou", "base_iou", "novel_iou", "accuracy", "macro_f1", "segm_map_50", "segm_map", "bbox_map_50",
        "bbox_map", "pixel_auroc", "pixel_aupro")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stage2", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run, < 1 min)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--data-root", default=str(SHARED), help="folder holding magnetic_tile/ and neu_seg/")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--vae-steps", type=int, default=None, help="training steps of the tiny VAE (--vae trained)")
    p.add_argument("--stage1-steps", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--shots", type=int, default=None, help="max training images per defect class")
    p.add_argument("--lr", type=float, default=5e-4, help="stage-2 AdamW learning rate (paper: 5e-5 for 50 "
                   "epochs at 512 px; a small head trained for few steps needs more)")
    p.add_argument("--blocks", choices=["up", "down"], default="up", help="U-Net side of the diffusion levels")
    p.add_argument("--vae-levels", type=int, default=0, help="VAE-decoder levels of the diffusion extractor")
    p.add_argument("--vae", choices=["trained", "random"], default="trained",
                   help="the frozen tiny VAE: trained first on the training images (stand-in for SD's pretrained "
                   "VAE), or random weights (the earlier setting)")
    p.add_argument("--no-control", action="store_true", help="skip the untrained-stage-1 control run")
    p.add_argument("--no-captions", action="store_true",
                   help="skip the caption-only supervision run (EfficientNet-Lite0 features)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared 2-core machine)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _parser().parse_args(argv)
    cfg = dict(QUICK if a.quick else FULL)
    for key in ("image_size", "vae_steps", "stage1_steps", "epochs", "shots"):
        if getattr(a, key) is not None:
            cfg[key] = getattr(a, key)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)  # the random inits not seeded on their own (the implicit captioner) are the same every run
    from common.encoders import MiniLMText
    from common.encoders.vae import FrozenVAE
    from diffdefect import DiffusionFeatures, EfficientNetFeatures

    roots = {n: Path(a.data_root) / DATASETS[n]["folder"] for n in a.datasets}
    missing = [n for n, r in roots.items() if not r.is_dir()]
    for n in missing:
        print(f"stage2 benchmark: {roots[n]} not found, skipping {n}")
    names = [n for n in a.datasets if n not in missing]
    if not names:
        return {}
    text = MiniLMText()
    dms = {n: datamodule(n, roots[n], cfg) for n in names}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        full_train = []
        for n in names:  # stage 1 sees every training image (not only the few-shot subset), never a test image
            dm_all = datamodule(n, roots[n], {**cfg, "shots": None, "good": None, "test_per_class": None})
            train = dm_all.split_records()["train"]
            full_train += train if not a.quick else cap(train, 4, 4)
        if a.vae == "trained":
            vae, vae_summary = train_vae(full_train, cfg, Path(tmp))
            print(f"VAE: {vae_summary['steps']} steps in {vae_summary['seconds']:.0f} s, L1 {vae_summary['final_l1']:.4f}",
                  flush=True)
        else:
            vae = FrozenVAE(preset="tiny", scaling_factor=1.0)
            vae.scaling_factor = latent_scale(vae, load_images(full_train, cfg["image_size"], n=64))
            vae_summary = {"steps": 0, "random": True}
        vae_summary["scaling_factor"] = vae.scaling_factor
        stage1, untrained, s1 = train_stage1(full_train, cfg, text, vae, Path(tmp))
        s1["vae"] = vae_summary
        print(f"stage 1: {s1['steps']} steps on {s1['pairs']} pairs in {s1['seconds']:.0f} s, loss {s1['final_loss']:.4f}",
              flush=True)
        for n in names:
            spec, dm = DATASETS[n], dms[n]
            splits = dm.split_records()
            runs = {}
            kinds = (["diffusion", "efficientnet"] + ([] if a.no_control else ["diffusion_untrained"])
                     + ([] if a.no_captions else ["efficientnet_captions"]))
            for kind in kinds:
                if kind.startswith("diffusion"):
                    s1_model = stage1 if kind == "diffusion" else untrained
                    extractor = DiffusionFeatures(stage1=s1_model, timestep=50, blocks=a.blocks,
                                                  vae_levels=a.vae_levels)
                else:
                    extractor = EfficientNetFeatures("efficientnet_lite0", weights="efficientnet_lite0_package")
                supervision = "captions" if kind.endswith("_captions") else "labels"
                runs[kind] = run_stage2(extractor, dm, spec, cfg, text, a.lr, supervision)
                m = runs[kind]["metrics"]
                print(f"{n} {kind}: mIoU {m.get('miou', float('nan')):.4f} novel {m.get('novel_iou', float('nan')):.4f} "
                      f"acc {m.get('accuracy', float('nan')):.4f} ({runs[kind]['fit_seconds']:.0f} s fit)", flush=True)
            counts = {s: len(v) for s, v in splits.items()}
            delta = {k: runs["diffusion"]["metrics"].get(k, float("nan")) - runs["efficientnet"]["metrics"].get(k, float("nan"))
                     for k in KEYS}
            payload = {
                "config": {**cfg, "dataset": n, "base_classes": spec["base"], "novel_classes": spec["novel"],
                           "vocabulary": dm.vocabulary, "split_sizes": counts, "lr": a.lr, "threads": a.threads,
                           "diffusion_blocks": a.blocks, "diffusion_vae_levels": a.vae_levels, "timestep": 50,
                           "head": "small", "text_encoder": "MiniLM (all-MiniLM-L6-v2, 384-d, frozen)",
                           "stage1": s1, "quick": a.quick},
                "results": runs,
                "diffusion_minus_efficientnet": delta,
                "diffusion_minus_untrained": {
                    k: runs["diffusion"]["metrics"].get(k, float("nan"))
                    - runs["diffusion_untrained"]["metrics"].get(k, float("nan")) for k in KEYS
                } if "diffusion_untrained" in runs else None,
                "notes": [
                    "one seed, one split, CPU-sized: stage 1 is a 6M-parameter U-Net trained for minutes on a "
                    f"{'random' if a.vae == 'random' else 'tiny, briefly trained'} VAE, not the paper's 860M model "
                    "on SD's VAE; differences of a few points are within noise",
                    "novel classes are never seen by the head (training images showing them are dropped); stage 1 "
                    "saw their training images and captions, as the paper's IMDD-1M contains these datasets",
                    "efficientnet_captions: caption-only supervision (class-agnostic defect masks, pseudo-labels from "
                    "the nouns of the templated captions of common.data.captions, as these data sets have no captions "
                    "of their own, plus the grounding loss) on the same features as efficientnet",
                ],
            }
            results[n] = payload
            path = _common.write_results(f"stage2_{n}_quick" if a.quick else f"stage2_{n}", payload)
            rows = [table_row(runs, kinds, k, k) for k in KEYS]
            rows += [table_row(runs, kinds, f"iou_{c}", f"iou_{c}") for c in dm.vocabulary]
            rows += [table_row(runs, kinds, f"novel-only {k}", k, "novel_only_metrics")
                     for k in ("miou", "novel_iou", "accuracy", "pixel_auroc")]
            _common.print_table(f"stage 2 on {n} (train {spec['base']}, novel {spec['novel']} named only) -> {path.name}",
                                ["metric", *kinds, "diffusion - efficientnet"], rows)
    return results


if __name__ == "__main__":
    main()
