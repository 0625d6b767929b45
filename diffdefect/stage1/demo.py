"""``make demo-diffusion``: stage 1 you can see, on a CPU, from generated data, with nothing downloaded.

1. Generates the stage-1 corpus: the demo surfaces and defects (:mod:`common.data.demo`, objects ``plate`` and
   ``fabric``, defects ``scratch``, ``hole``, ``stain``) with seed 1, so it shares no image with ``data/demo``
   (seed 0, whose test images the generation metrics compare against), and its templated captions
   (:mod:`diffdefect.stage1.captions`).
2. Trains the small VAE (``configs/diffdefect/vae_demo.yaml``) and exports it.
3. Encodes the corpus once into latent shards (:mod:`diffdefect.stage1.precompute`).
4. Trains the small stage-1 U-Net with the implicit captioner (``configs/diffdefect/stage1_demo.yaml``).
5. Samples, with classifier-free guidance and the EMA weights, a grid: one row per object x defect type (and
   defect-free) prompt, a real corpus image of that class in the first column. Writes ``<out>/grid.png``.
6. Inpaints each defect type into defect-free images within Perlin-shaped masks: ``<out>/inpaint.png``.

The same ``lightning fit`` runs a user would type, in one process::

    python -m diffdefect.stage1.demo [--corpus data/demo_stage1] [--out runs/demo_diffusion]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from common.data.demo import DEFECTS, generate_demo_dataset

VAE_CONFIG = "configs/diffdefect/vae_demo.yaml"
STAGE1_CONFIG = "configs/diffdefect/stage1_demo.yaml"
OBJECTS = ("plate", "fabric")
FULL = {"n_good": 100, "n_defect": 100, "vae_steps": 400, "stage1_steps": 1500, "sample_steps": 50, "per_prompt": 6}
QUICK = {"n_good": 4, "n_defect": 2, "vae_steps": 2, "stage1_steps": 2, "sample_steps": 2, "per_prompt": 1}


def generate_corpus(root: str | Path, n_good: int, n_defect: int, seed: int = 1) -> Path:
    """The stage-1 corpus (MVTec layout, 128 px) and its image-text manifest ``<root>/pairs.jsonl``."""
    from common.data.readers import MVTecReader
    from diffdefect.stage1.captions import build_manifest

    root = generate_demo_dataset(root, seed=seed, objects=OBJECTS, n_train_good=n_good, n_test_good=0,
                                 n_test_defect=n_defect)
    return build_manifest(MVTecReader(root), Path(root) / "pairs.jsonl")


def class_rows(objects: Sequence[str] = OBJECTS, defects: Sequence[str | None] = (None, *DEFECTS)
               ) -> list[tuple[str, str | None]]:
    """The grid's rows: ``(object, defect or None for defect-free)``."""
    return [(o, d) for o in objects for d in defects]


def labelled_grid(rows: list[list[np.ndarray]], labels: Sequence[str], path: str | Path, scale: int = 2) -> Path:
    """Writes a grid of ``(H, W, 3)`` uint8 tiles, one labelled row per entry, upscaled ``scale`` x (nearest)."""
    h, w = rows[0][0].shape[:2]
    h, w = h * scale, w * scale
    label_w, pad = 96, 2
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (label_w + cols * (w + pad), len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (tiles, label) in enumerate(zip(rows, labels, strict=True)):
        y = r * (h + pad)
        draw.text((4, y + h // 2 - 10), label.replace(" ", "\n", 1), fill="black")
        for c, tile in enumerate(tiles):
            img = Image.fromarray(tile).resize((w, h), Image.NEAREST)
            sheet.paste(img, (label_w + c * (w + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``(N, 3, H, W)`` in [0, 1] -> list of ``(H, W, 3)`` uint8."""
    return list((images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))


def real_example(corpus: Path, obj: str, defect: str | None, size: int) -> np.ndarray:
    """The first corpus image of a class, resized to ``size``."""
    from common.data.image_text import resize_image
    from common.data.io import read_image

    folder = corpus / obj / "train" / "good" if defect is None else corpus / obj / "test" / defect
    first = sorted(folder.glob("*.png"))[0]
    return to_uint8(resize_image(read_image(first), size)[None])[0]


def sample_grid(module: torch.nn.Module, corpus: Path, out: Path, per_prompt: int, steps: int, guidance: float,
                seed: int = 0) -> Path:
    """Samples ``per_prompt`` images per grid row (:func:`class_rows`) and writes ``grid.png`` and the samples."""
    from diffdefect.stage1.sampling import defect_prompt, generate, save_images

    rows = class_rows()
    prompts = [defect_prompt(o, d, i) for o, d in rows for i in range(per_prompt)]
    images = generate(module.model, prompts, scheduler="ddim", steps=steps, guidance=guidance, seed=seed,
                      batch_size=16)  # (N, 3, H, W)
    names = [f"{o}/{d or 'good'}/{i:02d}.png" for o, d in rows for i in range(per_prompt)]
    save_images(images, out / "samples", names, grid=False)
    (out / "samples" / "prompts.jsonl").write_text(
        "".join(json.dumps({"image": n, "prompt": p}) + "\n" for n, p in zip(names, prompts, strict=True)))
    tiles = to_uint8(images)
    size = images.shape[-1]
    grid_rows = [[real_example(corpus, o, d, size), *tiles[k * per_prompt:(k + 1) * per_prompt]]
                 for k, (o, d) in enumerate(rows)]
    labels = [f"{o} {d or 'good'}" for o, d in rows]
    return labelled_grid(grid_rows, labels, out / "grid.png")


def inpaint_grid(module: torch.nn.Module, corpus: Path, out: Path, steps: int, guidance: float, per_object: int = 2,
                 seed: int = 0) -> Path:
    """Inpaints every defect type into ``per_object`` defect-free corpus images per object within Perlin-shaped
    masks (:mod:`diffdefect.stage1.inpaint`); writes ``inpaint.png``: normal image, mask, then one column per
    defect type."""
    from diffdefect.stage1.inpaint import inpaint, mask_prompt, perlin_masks
    from diffdefect.stage1.sampling import load_images_list

    size = module.model.unet.sample_size * module.model.vae.downsample
    rows, labels = [], []
    for k, obj in enumerate(OBJECTS):
        files = sorted((corpus / obj / "train" / "good").glob("*.png"))[-per_object:]
        normals = load_images_list(files, size)
        masks = perlin_masks(len(files), size, seed=seed + k, area=(0.01, 0.12))
        outs = [inpaint(module.model, normals, masks,
                        [mask_prompt(obj, d, m[0].numpy() > 0.5, f"{d}{i}") for i, m in enumerate(masks)],
                        scheduler="ddim", steps=steps, guidance=guidance, seed=seed) for d in DEFECTS]
        for i in range(len(files)):
            rows.append([to_uint8(normals[i:i + 1])[0], to_uint8(masks[i:i + 1].expand(-1, 3, -1, -1))[0],
                         *[to_uint8(o[i:i + 1])[0] for o in outs]])
            labels.append(f"{obj} {'/'.join(DEFECTS)}")
    return labelled_grid(rows, labels, out / "inpaint.png")


def run_diffusion_demo(corpus: str = "data/demo_stage1", out: str = "runs/demo_diffusion", quick: bool = False,
                       guidance: float = 4.0, stage1_steps: int | None = None, reuse: bool = False
                       ) -> dict[str, float]:
    """Runs the five steps of the module docstring; returns the wall time of each (seconds).

    Args:
        corpus: Where the stage-1 corpus is generated.
        out: Output folder (VAE, latents, checkpoints, samples, ``grid.png``).
        quick: A smoke run on a handful of images and steps (tests).
        guidance: Classifier-free guidance scale of the samples.
        stage1_steps: Overrides the number of stage-1 optimizer steps.
        reuse: Keep the VAE and the latent shards an earlier run left in ``out`` (only stage 1 and the samples are
            redone; their times then read 0).
    """
    from common.cli import DefectCLI
    from common.config import load_config
    from diffdefect.stage1.checkpoint import load_stage1
    from diffdefect.stage1.precompute import encoders_from_config, precompute

    cfg = dict(QUICK if quick else FULL)
    if stage1_steps is not None:
        cfg["stage1_steps"] = stage1_steps
    out_dir, corpus_dir = Path(out), Path(corpus)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest = generate_corpus(corpus_dir, cfg["n_good"], cfg["n_defect"])
    times["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    vae_dir = out_dir / "vae"
    if not (reuse and (vae_dir / "config.json").is_file()):
        DefectCLI(args=["fit", "--config", VAE_CONFIG, "--data.init_args.source", str(manifest),
                        "--model.init_args.export_dir", str(vae_dir), "--trainer.max_steps", str(cfg["vae_steps"]),
                        "--trainer.default_root_dir", str(out_dir / "vae_fit")])
    times["vae"] = time.perf_counter() - t

    t = time.perf_counter()
    stage1_cfg = load_config(STAGE1_CONFIG)
    stage1_cfg["model"]["init_args"]["model"]["init_args"]["vae"]["init_args"]["pretrained"] = str(vae_dir)
    latents = out_dir / "latents"
    if not (reuse and (latents / "index.json").is_file()):
        vae, text_encoder, image_encoder, tokens = encoders_from_config(stage1_cfg)
        precompute(str(manifest), latents, vae, text_encoder, image_encoder, image_size=64, tokens=tokens,
                   num_workers=0, dtype="float32")
        del vae, text_encoder, image_encoder
    times["precompute"] = time.perf_counter() - t

    t = time.perf_counter()
    fit = DefectCLI(args=["fit", "--config", STAGE1_CONFIG, "--data.init_args.source", str(latents),
                          "--model.init_args.model.init_args.vae.init_args.pretrained", str(vae_dir),
                          "--trainer.max_steps", str(cfg["stage1_steps"]),
                          "--trainer.default_root_dir", str(out_dir),
                          "--trainer.logger.init_args.save_dir", str(out_dir),
                          "--trainer.callbacks", json.dumps([{
                              "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                              "init_args": {"dirpath": str(out_dir / "checkpoints"), "save_last": True,
                                            "every_n_train_steps": 100}}])])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    if not ckpt:
        raise RuntimeError(f"stage-1 training wrote no last.ckpt; check the ModelCheckpoint in {STAGE1_CONFIG}")
    times["stage1"] = time.perf_counter() - t

    t = time.perf_counter()
    module = load_stage1(ckpt, ema=True)
    grid = sample_grid(module, corpus_dir, out_dir, cfg["per_prompt"], cfg["sample_steps"], guidance)
    inpainted = inpaint_grid(module, corpus_dir, out_dir, cfg["sample_steps"], guidance,
                             per_object=1 if quick else 2)
    times["sampling"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    (out_dir / "times.json").write_text(json.dumps({**times, "checkpoint": str(ckpt), **cfg}, indent=1) + "\n")
    print("\n" + "=" * 60)
    print(f"defectfm diffusion demo: {times['total'] / 60:.1f} min "
          + ", ".join(f"{k} {v:.0f} s" for k, v in times.items() if k != "total"))
    print(f"stage-1 checkpoint (EMA inside): {ckpt}")
    print(f"samples: {grid} (rows: object x defect prompt; first column a real image), {out_dir}/samples/")
    print(f"inpainting: {inpainted} (normal image, Perlin mask, then {', '.join(DEFECTS)} inpainted in the mask)")
    print("=" * 60)
    return times


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry of ``make demo-diffusion``."""
    p = argparse.ArgumentParser(prog="python -m diffdefect.stage1.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="data/demo_stage1")
    p.add_argument("--out", default="runs/demo_diffusion")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--stage1-steps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a smoke run (a handful of images and steps)")
    p.add_argument("--reuse", action="store_true", help="keep the VAE and latents of an earlier run in --out")
    a = p.parse_args(argv)
    run_diffusion_demo(a.corpus, a.out, a.quick, a.guidance, a.stage1_steps, a.reuse)


if __name__ == "__main__":
    main()
