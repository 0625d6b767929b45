"""Defect inpainting with masks: a normal image + a mask + a prompt -> the defect inside the mask, the rest kept.

Method: RePaint-style known-region replacement in latent space (Lugmayr et al., CVPR 2022), with the same
text-to-image stage-1 U-Net. After every denoising step the latents outside the (latent-resolution) mask are
replaced by the normal image's VAE latents noised to the next step's level, so the generated region is denoised
in the context of the real surface; after decoding, pixels outside the pixel mask are copied from the normal image
(exactly preserved). Why not an inpainting-conditioned U-Net (SD-inpainting's 9-channel input): it needs its own
training run with masked inputs, i.e. a second model to train and keep, and the paper has one stage-1 model that
both generates and extracts features; replacement needs no training and works with any stage-1 checkpoint. Its
known weakness (the generated region may not harmonise at the border; RePaint adds resampling jumps) matters
little for small defect masks on textured surfaces.

Masks: hand-drawn PNGs or another defect's ground truth (:func:`load_masks`), or Perlin-shaped
(:func:`perlin_masks`, the same :class:`~common.synthesis.PerlinAnomalyGenerator` regions CLIP-MDC trains on).
Prompts follow the training captions, with the location and size read from the mask
(:func:`common.data.captions.caption_for`). :func:`synthesize_inpainted` writes image + mask pairs in the MVTec
layout (readable by :class:`~common.data.readers.MVTecReader`) plus ``synthetic.jsonl`` with the captions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.data.captions import caption_for
from common.data.types import SampleRecord


def check_inpaint_inputs(known: torch.Tensor, mask: torch.Tensor, n: int, downsample: int) -> int:
    """Checks inpainting inputs; returns the latent side.

    Args:
        known: ``(N, 3, H, W)`` images in [0, 1], square, ``H`` divisible by the VAE's ``downsample``.
        mask: ``(N, 1, H, W)`` in {0, 1}.
        n: Number of prompts.
        downsample: VAE downsampling factor.
    """
    if known.ndim != 4 or known.shape[1] != 3 or known.shape[-1] != known.shape[-2]:
        raise ValueError(f"known images must be (N, 3, S, S), got {tuple(known.shape)}")
    if tuple(mask.shape) != (known.shape[0], 1, *known.shape[-2:]):
        raise ValueError(f"masks must be (N, 1, S, S) like the images {tuple(known.shape)}, got {tuple(mask.shape)}")
    if known.shape[0] != n:
        raise ValueError(f"{known.shape[0]} images to inpaint but {n} prompts")
    if known.shape[-1] % downsample:
        raise ValueError(f"image side {known.shape[-1]} is not a multiple of the VAE's downsampling {downsample}")
    return known.shape[-1] // downsample


class KnownRegion:
    """The known (kept) part of a batch being inpainted.

    Args:
        model: The stage-1 model (its VAE encodes the known images).
        known: ``(B, 3, H, W)`` images in [0, 1].
        mask: ``(B, 1, H, W)``, 1 where new content is generated.
        generator: Source of the noise added to the known latents.
    """

    def __init__(self, model: Any, known: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> None:
        self.known = known.float()
        self.mask = (mask > 0.5).float()  # (B, 1, H, W)
        self.z0 = model.vae.encode(self.known, sample=False)  # (B, C, h, w), scaled posterior mean
        # a latent is generated where any of its pixels is: max-pool the mask to the latent grid
        self.latent_mask = F.adaptive_max_pool2d(self.mask, self.z0.shape[-2:])  # (B, 1, h, w)
        self.generator = generator

    def replace(self, latents: torch.Tensor, schedule: Any, timestep: torch.Tensor | int | None) -> torch.Tensor:
        """``(B, C, h, w)`` latents at ``timestep`` with the known region put back (noised to that timestep;
        clean when ``timestep`` is ``None``, after the last step)."""
        if timestep is None:
            known = self.z0
        else:
            noise = torch.randn(self.z0.shape, generator=self.generator).to(self.z0.device)
            ts = torch.full((self.z0.shape[0],), int(timestep), dtype=torch.long, device=self.z0.device)
            known = schedule.add_noise(self.z0, noise, ts)
        return self.latent_mask * latents + (1.0 - self.latent_mask) * known

    def composite(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoded ``(B, 3, H, W)`` images with the known pixels outside the mask copied back exactly."""
        return self.mask * decoded.to(self.known.device) + (1.0 - self.mask) * self.known


def inpaint(model: Any, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
    """Generates ``prompts`` inside ``masks`` of ``images`` (``(N, 3, S, S)`` in [0, 1], ``(N, 1, S, S)``);
    ``kwargs`` go to :func:`~diffdefect.stage1.sampling.generate` (scheduler, steps, guidance, seed, batch_size).

    Returns:
        ``(N, 3, S, S)`` in [0, 1], equal to ``images`` outside the masks.
    """
    from diffdefect.stage1.sampling import generate

    return generate(model, list(prompts), known=images, mask=masks, **kwargs)


# ----------------------------------------------------------------------------- masks
def perlin_masks(n: int, size: int, seed: int = 0, area: tuple[float, float] = (0.005, 0.08),
                 max_tries: int = 200) -> torch.Tensor:
    """``n`` Perlin-shaped ``(n, 1, size, size)`` {0, 1} masks whose area fraction lies in ``area``.

    The regions of :class:`~common.synthesis.PerlinAnomalyGenerator` (thresholded rotated Perlin noise), drawn by
    seed until ``n`` fall within ``area``, then kept to their largest connected blob (a defect is one region).
    """
    from scipy import ndimage

    from common.synthesis import PerlinAnomalyGenerator

    gen = PerlinAnomalyGenerator(normal_prob=0.0, scale_exp_range=(2, 5), threshold=0.6)
    blank = torch.full((1, 3, size, size), 0.5)
    out: list[torch.Tensor] = []
    for k in range(max_tries * max(1, n)):
        if len(out) == n:
            break
        m = gen.batch(blank, seeds=[seed * 100_003 + k]).mask[0, 0].numpy() > 0.5
        labels, count = ndimage.label(m)
        if count == 0:
            continue
        sizes = ndimage.sum(m, labels, range(1, count + 1))
        blob = labels == (int(np.argmax(sizes)) + 1)
        if area[0] <= blob.mean() <= area[1]:
            out.append(torch.from_numpy(blob.astype(np.float32))[None])
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} of {n} Perlin masks fell within the area range {area}")
    return torch.stack(out)


def load_masks(paths: Sequence[str | Path], size: int) -> torch.Tensor:
    """Binary mask PNGs (hand-drawn, or another defect's ground truth) as ``(N, 1, size, size)`` {0, 1}."""
    out = []
    for p in paths:
        try:
            m = Image.open(p).convert("L").resize((size, size), Image.NEAREST)
        except OSError as err:
            raise ValueError(f"{p}: not a readable mask image ({err})") from err
        arr = np.asarray(m) > 127
        if not arr.any():
            raise ValueError(f"{p}: the mask is empty (no pixel > 127)")
        out.append(torch.from_numpy(arr.astype(np.float32))[None])
    return torch.stack(out)


def mask_prompt(obj: str, defect: str, mask: np.ndarray, name: str) -> str:
    """The training-caption style prompt for a defect of ``defect`` in ``mask`` (location and size from the mask)."""
    record = SampleRecord(image_path=Path(name), object_name=obj, defect_type=defect, is_anomalous=True)
    return caption_for(record, mask).text


# ----------------------------------------------------------------------------- writing
def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def synthesize_inpainted(
    model: Any,
    normals: torch.Tensor,
    masks: torch.Tensor,
    out: str | Path,
    obj: str,
    defects: Sequence[str],
    normal_names: Sequence[str] | None = None,
    **generate_kwargs: Any,
) -> Path:
    """Inpaints every defect type into every (normal image, mask) pair and writes the MVTec layout.

    Layout under ``out/<obj>/``: ``train/good/<k>.png`` (the normal images, as given), ``test/<defect>/<k>.png``
    (the inpainted images) and ``ground_truth/<defect>/<k>_mask.png`` (the mask the defect was generated in: pixels
    outside it are the normal image's, unchanged), plus ``out/synthetic.jsonl`` (image, mask, caption = prompt,
    object, defect type, label, source normal image).

    Args:
        model: The stage-1 model (EMA weights in).
        normals: ``(N, 3, S, S)`` defect-free images in [0, 1].
        masks: ``(N, 1, S, S)`` masks, one per normal image.
        out: Output root.
        obj: Object name (folder and prompt).
        defects: Defect types to inpaint.
        normal_names: Names of the normal images (recorded in the manifest).
        **generate_kwargs: :func:`~diffdefect.stage1.sampling.generate` settings.

    Returns:
        The manifest path.
    """
    out = Path(out)
    n = normals.shape[0]
    if masks.shape[0] != n:
        raise ValueError(f"{n} normal images but {masks.shape[0]} masks")
    names = list(normal_names) if normal_names is not None else [f"{k:03d}.png" for k in range(n)]
    for k in range(n):
        _save(_u8(normals[k]), out / obj / "train" / "good" / f"{k:03d}.png")
    lines = []
    for d in defects:
        prompts = [mask_prompt(obj, d, masks[k, 0].numpy() > 0.5, f"{d}{k:03d}") for k in range(n)]
        images = inpaint(model, normals, masks, prompts, **generate_kwargs)
        for k in range(n):
            rel, mrel = f"{obj}/test/{d}/{k:03d}.png", f"{obj}/ground_truth/{d}/{k:03d}_mask.png"
            _save(_u8(images[k]), out / rel)
            _save((masks[k, 0].numpy() > 0.5).astype(np.uint8) * 255, out / mrel)
            lines.append(json.dumps({"image": rel, "mask": mrel, "caption": prompts[k], "object": obj,
                                     "defect_type": d, "label": 1, "source": names[k]}, sort_keys=True))
    manifest = out / "synthetic.jsonl"
    kept = [ln for ln in (manifest.read_text().splitlines() if manifest.exists() else [])
            if json.loads(ln)["object"] != obj]  # other objects' lines stay; this object's are rewritten
    manifest.write_text("".join(line + "\n" for line in kept + lines))
    return manifest
