"""Text-to-image sampling with a trained stage-1 model (apart from training: a function and a command).

* :func:`generate`: prompts (or image embeddings, through the implicit captioner) -> images, with DDIM,
  DPM-Solver++ or DDPM (diffusers schedulers built from the training schedule's config), classifier-free
  guidance (the null context is the one CFG dropout trains), a seed, batching.
* ``--synthesize --normals DIR``: defects inpainted into real normal images within masks (Perlin-shaped, or a
  folder of mask PNGs), written as image + mask pairs in the MVTec layout with captions
  (:func:`diffdefect.stage1.inpaint.synthesize_inpainted`).
* :func:`synthesize_defects` (``--synthesize`` without ``--normals``): an MVTec-layout folder of whole generated
  defect images (``<object>/test/<defect>/``, ``<object>/train/good/``) plus ``synthetic.jsonl``, a manifest the
  common data layer reads (text-to-image samples have no masks; see its docstring).

Command line (also ``defectfm sample``)::

    python -m diffdefect.stage1.sampling --ckpt runs/stage1/last.ckpt --prompt "a metal plate with a long scratch" \
        --scheduler dpm --steps 25 --guidance 5 --seed 0 --out samples/
    python -m diffdefect.stage1.sampling --ckpt last.ckpt --synthesize --objects plate fabric \
        --defects scratch hole --per-class 16 --out synthetic/
    python -m diffdefect.stage1.sampling --ckpt last.ckpt --synthesize --normals data/demo/plate/train/good \
        --masks perlin --objects plate --defects scratch hole stain --per-class 16 --out synthetic/
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from common.data.captions import DEFECT_TERMS, LOCATIONS, SURFACES
from common.data.vocabulary import readable
from diffdefect.stage1.checkpoint import load_stage1
from diffdefect.stage1.model import Stage1Model

SAMPLERS = ("ddim", "dpm", "ddpm")


def make_sampler(name: str, schedule_config: dict[str, Any]) -> Any:
    """A diffusers sampling scheduler with the training betas and prediction type.

    Args:
        name: ``"ddim"``, ``"dpm"`` (DPM-Solver++ multistep) or ``"ddpm"``.
        schedule_config: The training ``DDPMScheduler`` config (``NoiseSchedule.config``).
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    cfg = {k: v for k, v in schedule_config.items() if not k.startswith("_")}
    if name == "ddim":
        return DDIMScheduler.from_config(cfg, set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    if name == "dpm":
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2)
    if name == "ddpm":
        return DDPMScheduler.from_config(cfg)
    raise ValueError(f"scheduler must be one of {SAMPLERS}, got {name!r}")


@torch.no_grad()
def generate(
    model: Stage1Model,
    prompts: Sequence[str] | None = None,
    image_embeddings: torch.Tensor | None = None,
    scheduler: str = "ddim",
    steps: int = 50,
    guidance: float = 5.0,
    seed: int = 0,
    batch_size: int = 8,
    latent_size: int | None = None,
    known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generates one image per prompt (or per image embedding, via the implicit captioner).

    With ``known`` and ``mask`` it inpaints (:mod:`diffdefect.stage1.inpaint`): after every denoising step the
    latents outside the mask are replaced by the known image's latents noised to the same level (RePaint's
    known-region replacement, in latent space), and the decoded result keeps the known pixels outside the mask.

    Args:
        model: The stage-1 model (put EMA weights in first; see :func:`load_stage1`).
        prompts: ``N`` text prompts.
        image_embeddings: ``(N, D_v)`` CLIP image embeddings instead of prompts (pseudo-text conditioning).
        scheduler: ``"ddim"``, ``"dpm"`` or ``"ddpm"``.
        steps: Denoising steps.
        guidance: Classifier-free guidance scale (1 disables guidance: one U-Net pass per step).
        seed: Seed of the initial noise (image ``i`` depends only on the seed and its index in the batch).
        batch_size: Images per U-Net batch.
        latent_size: Latent side (default: the U-Net's ``sample_size``; 64 for 512-px images).
        known: ``(N, 3, H, W)`` images in [0, 1] to inpaint (their size sets the latent size).
        mask: ``(N, 1, H, W)`` {0, 1}, 1 where the image is generated (needs ``known``).

    Returns:
        ``(N, 3, H, W)`` float32 images in [0, 1] on the CPU.
    """
    if model.vae is None:
        raise ValueError("sampling needs the model's VAE to decode latents")
    if (prompts is None) == (image_embeddings is None):
        raise ValueError("give either prompts or image_embeddings")
    if (known is None) != (mask is None):
        raise ValueError("inpainting needs both known images and masks")
    region_mask = mask  # `mask` is reused below for the text tokens' mask
    model.eval()
    device = next(model.unet.parameters()).device
    n = len(prompts) if prompts is not None else int(image_embeddings.shape[0])
    size = latent_size or model.unet.sample_size
    if known is not None:
        from diffdefect.stage1.inpaint import check_inpaint_inputs

        size = check_inpaint_inputs(known, region_mask, n, model.vae.downsample)
    channels = model.unet.in_channels
    outputs = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        b = stop - start
        tokens = mask = None
        if prompts is not None:
            text, tokens, mask = model.encode_text(list(prompts[start:stop]))  # (b, D)
            text = text.to(device)
            tokens = None if tokens is None else tokens.to(device)
            mask = None if mask is None else mask.to(device)
        else:
            text = model.captioner(image_embeddings[start:stop].to(device).float())  # (b, D) t_imp
        if model.conditioning.context == "sequence" and tokens is None:
            # pseudo text has no token states: the sequence layout reduces to [vector]
            tokens = text.new_zeros(b, 0, text.shape[-1])
            mask = torch.zeros(b, 0, dtype=torch.bool, device=device)
        context, ctx_mask = model.conditioning.build(text, tokens, mask)  # (b, L, D)
        use_cfg = guidance != 1.0
        if use_cfg:
            seq = 0 if tokens is None else tokens.shape[1]
            null, null_mask = model.conditioning.null_context(b, text.shape[-1], seq, device)
            context = torch.cat([null, context])  # (2b, L, D)
            ctx_mask = None if ctx_mask is None else torch.cat([null_mask, ctx_mask])
        sampler = make_sampler(scheduler, model.schedule.config)
        sampler.set_timesteps(steps, device=device)
        g = torch.Generator(device="cpu").manual_seed(seed + start)
        latents = torch.randn(b, channels, size, size, generator=g).to(device) * sampler.init_noise_sigma
        region = None
        if known is not None:
            from diffdefect.stage1.inpaint import KnownRegion

            region = KnownRegion(model, known[start:stop].to(device), region_mask[start:stop].to(device), g)
        for i, t in enumerate(sampler.timesteps):
            inp = torch.cat([latents] * 2) if use_cfg else latents
            inp = sampler.scale_model_input(inp, t)
            ts = torch.full((inp.shape[0],), int(t), device=device, dtype=torch.long)
            pred = model.unet(inp, ts, context, ctx_mask)  # (b or 2b, C, h, w)
            if use_cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance * (cond - uncond)
            latents = sampler.step(pred, t, latents, generator=g if scheduler == "ddpm" else None).prev_sample
            if region is not None:  # known region at the noise level of the next timestep (clean after the last)
                nxt = sampler.timesteps[i + 1] if i + 1 < len(sampler.timesteps) else None
                latents = region.replace(latents, model.schedule, nxt)
        decoded = model.vae.decode(latents)  # (b, 3, H, W)
        outputs.append((decoded if region is None else region.composite(decoded)).cpu())
    return torch.cat(outputs)


# ----------------------------------------------------------------------------- writing
def save_images(images: torch.Tensor, out: str | Path, names: Sequence[str] | None = None, grid: bool = True) -> list[Path]:
    """Writes ``(N, 3, H, W)`` images in [0, 1] as PNGs (``000000.png``... or ``names``) and ``grid.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (N, H, W, 3)
    paths = []
    for i, arr in enumerate(arrays):
        path = out / (names[i] if names is not None else f"{i:06d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        paths.append(path)
    if grid and len(arrays):
        cols = math.ceil(math.sqrt(len(arrays)))
        rows = math.ceil(len(arrays) / cols)
        h, w = arrays.shape[1:3]
        sheet = np.full((rows * h, cols * w, 3), 255, np.uint8)
        for i, arr in enumerate(arrays):
            r, c = divmod(i, cols)
            sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = arr
        Image.fromarray(sheet).save(out / "grid.png")
    return paths


_LOCS = tuple(word for row in LOCATIONS for word in row)  # the captions' words, so prompts match training text
_SIZES = ("small", "medium-sized", "large")


def defect_prompt(obj: str, defect: str | None, index: int) -> str:
    """A prompt in the style of the training captions (location and size vary with ``index``)."""
    o = readable(obj)
    head = f"A close-up inspection image of a {o}, {SURFACES.get(obj, f'a {o} surface')}."
    if defect is None:
        return (f"{head} The surface is uniform and free of defects: no scratches, holes, stains or deformations "
                "are visible, and the texture is consistent across the whole field of view.")
    term = DEFECT_TERMS.get(defect.lower(), readable(defect))
    return (f"{head} A {_SIZES[index % 3]} {term} is visible in the {_LOCS[index % 9]} region; the defect clearly "
            "breaks the regular surface texture.")


def synthesize_defects(
    model: Stage1Model,
    out: str | Path,
    objects: Sequence[str],
    defects: Sequence[str],
    per_class: int = 8,
    normal_per_object: int = 0,
    **generate_kwargs: Any,
) -> Path:
    """Writes generated defect images in the MVTec layout, plus ``synthetic.jsonl``.

    Layout: ``<out>/<object>/test/<defect>/<i>.png`` and, with ``normal_per_object``, ``<object>/train/good`` and
    ``<object>/test/good``. Generated images have no pixel masks, so no ``ground_truth`` folder is written; the
    manifest ``<out>/synthetic.jsonl`` (image, prompt as caption, object, defect type, label) is what
    ``ManifestReader`` / ``DefectDataModule`` read (image labels only: the weakly supervised regime).

    Returns:
        The manifest path.
    """
    out = Path(out)
    jobs: list[tuple[str, str | None, str, str]] = []
    for obj in objects:
        for d in defects:
            jobs += [(obj, d, f"{obj}/test/{d}/{i:03d}.png", defect_prompt(obj, d, i)) for i in range(per_class)]
        for i in range(normal_per_object):
            split = "train" if i % 2 == 0 else "test"
            jobs.append((obj, None, f"{obj}/{split}/good/{i:03d}.png", defect_prompt(obj, None, i)))
    images = generate(model, [j[3] for j in jobs], **generate_kwargs)
    save_images(images, out, [j[2] for j in jobs], grid=False)
    lines = []
    for obj, d, rel, prompt in jobs:
        entry = {"image": rel, "caption": prompt, "object": obj, "defect_type": d or "good", "label": int(d is not None)}
        lines.append(json.dumps(entry, sort_keys=True))
    manifest = out / "synthetic.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def generation_metrics(
    generated: torch.Tensor,
    real: torch.Tensor,
    inception_weights: str | None = None,
    feature: torch.nn.Module | None = None,
    is_feature: torch.nn.Module | None = None,
    splits: int = 10,
) -> dict[str, float]:
    """FID (generated vs real) and Inception Score (generated) with the common metrics.

    Args:
        generated: ``(N, 3, H, W)`` in [0, 1].
        real: ``(M, 3, H, W)`` in [0, 1].
        inception_weights: Local Inception-v3 weights file (nothing is downloaded).
        feature: Custom FID feature module instead of Inception (``(N, 3, H, W)`` -> ``(N, D)``).
        is_feature: Custom IS logits module instead of Inception.
        splits: IS splits.
    """
    from common.metrics import FID, InceptionScore

    fid = FID(inception_weights, feature=feature if feature is not None else 2048)
    fid.update(real, real=True)
    fid.update(generated, real=False)
    iscore = InceptionScore(inception_weights, feature=is_feature if is_feature is not None else "logits_unbiased",
                            splits=splits)
    iscore.update(generated)
    is_out = iscore.compute()
    return {"fid": float(fid.compute()), "is_mean": float(is_out["is_mean"]), "is_std": float(is_out["is_std"])}


def load_images(folder: str | Path, size: int) -> torch.Tensor:
    """Every image under ``folder`` (recursively, sorted) as ``(N, 3, size, size)`` in [0, 1]."""
    from common.data.io import is_image_file

    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
    if not paths:
        raise FileNotFoundError(f"no images under {folder}")
    return load_images_list(paths, size)


def synthesize_from_normals(model: Stage1Model, a: argparse.Namespace, kwargs: dict[str, Any]) -> Path:
    """``--synthesize --normals DIR``: inpaints ``--defects`` into ``--per-class`` normal images (first object of
    ``--objects``) within ``--masks`` (:func:`~diffdefect.stage1.inpaint.synthesize_inpainted`)."""
    from common.data.io import is_image_file
    from diffdefect.stage1.inpaint import load_masks, perlin_masks, synthesize_inpainted

    size = a.image_size or model.unet.sample_size * model.vae.downsample
    files = sorted(p for p in Path(a.normals).rglob("*") if p.is_file() and is_image_file(p))[: a.per_class]
    if not files:
        raise SystemExit(f"--normals {a.normals}: no images found")
    normals = load_images_list(files, size)
    if a.masks == "perlin":
        masks = perlin_masks(len(files), size, seed=a.seed)
    else:
        mask_files = sorted(p for p in Path(a.masks).rglob("*") if p.is_file() and is_image_file(p))
        if not mask_files:
            raise SystemExit(f"--masks {a.masks}: no mask images found (or give 'perlin')")
        masks = load_masks([mask_files[k % len(mask_files)] for k in range(len(files))], size)
    return synthesize_inpainted(model, normals, masks, a.out, a.objects[0], a.defects,
                                [str(f) for f in files], **kwargs)


def load_images_list(paths: Sequence[Path], size: int) -> torch.Tensor:
    """Images at ``paths`` as ``(N, 3, size, size)`` in [0, 1]."""
    from common.data.image_text import resize_image
    from common.data.io import read_image

    return torch.stack([resize_image(read_image(p), size) for p in paths])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m diffdefect.stage1.sampling --ckpt CKPT --prompt TEXT ... --out DIR``."""
    p = argparse.ArgumentParser(prog="defectfm sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint from `lightning fit`")
    p.add_argument("--config", default=None, help="YAML with the model section (when the checkpoint has no config)")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="a text file, one prompt per line")
    p.add_argument("--num-per-prompt", type=int, default=1)
    p.add_argument("--scheduler", choices=SAMPLERS, default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    p.add_argument("--synthesize", action="store_true", help="write an MVTec-layout folder of defect images")
    p.add_argument("--objects", nargs="+", default=["plate"])
    p.add_argument("--defects", nargs="+", default=["scratch"])
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--normal-per-object", type=int, default=0)
    p.add_argument("--normals", default=None,
                   help="with --synthesize: folder of defect-free images to inpaint defects into (image + mask pairs)")
    p.add_argument("--masks", default="perlin",
                   help="with --normals: 'perlin' (Perlin-shaped regions) or a folder of mask PNGs (hand-drawn or "
                        "another defect's ground truth), used in sorted order")
    p.add_argument("--image-size", type=int, default=None,
                   help="with --normals: side of the inpainted images (default: the U-Net's latent side x VAE factor)")
    p.add_argument("--real", default=None, help="folder of real images: also compute FID/IS (writes metrics.json)")
    p.add_argument("--inception-weights", default=None, help="local Inception-v3 weights file for FID/IS")
    a = p.parse_args(argv)
    module = load_stage1(a.ckpt, a.config, ema=not a.no_ema).to(a.device)
    kwargs = {"scheduler": a.scheduler, "steps": a.steps, "guidance": a.guidance, "seed": a.seed,
              "batch_size": a.batch_size}
    if a.synthesize and a.normals:
        manifest = synthesize_from_normals(module.model, a, kwargs)
        print(f"wrote inpainted defect image + mask pairs (MVTec layout) under {a.out} and the manifest {manifest}")
        return
    if a.synthesize:
        print("no --normals: text-to-image defects without masks (give --normals DIR for image + mask pairs)")
        manifest = synthesize_defects(module.model, a.out, a.objects, a.defects, a.per_class, a.normal_per_object,
                                      **kwargs)
        print(f"wrote synthetic defect images under {a.out} and the manifest {manifest}")
        return
    prompts = list(a.prompt)
    if a.prompts_file:
        prompts += [ln.strip() for ln in Path(a.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        p.error("give --prompt or --prompts-file (or --synthesize)")
    prompts = [q for q in prompts for _ in range(a.num_per_prompt)]
    images = generate(module.model, prompts, **kwargs)
    save_images(images, a.out)
    Path(a.out, "prompts.jsonl").write_text("".join(json.dumps({"image": f"{i:06d}.png", "prompt": q}) + "\n"
                                                    for i, q in enumerate(prompts)))
    print(f"wrote {len(prompts)} images and grid.png to {a.out}")
    if a.real:
        metrics = generation_metrics(images, load_images(a.real, images.shape[-1]), a.inception_weights,
                                     splits=min(10, len(images)))
        Path(a.out, "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        print("FID {fid:.3f}  IS {is_mean:.3f} +- {is_std:.3f}".format(**metrics))


if __name__ == "__main__":
    main()
