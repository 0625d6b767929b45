"""DRAEM-style Perlin anomaly generator: per sample in dataloader workers, or batched on the images' device.

For each sample: with probability ``normal_prob`` it is left normal; otherwise a Perlin field with
``2^[lo, hi)`` periods per axis (drawn independently) and a random rotation is thresholded at ``threshold``,
intersected with an optional foreground mask, and an anomaly texture is blended into that region. The texture
is an image from ``texture_dir`` (DRAEM uses DTD) or the image itself, both passed through random colour and
geometry changes (:mod:`common.synthesis.augment`).

Blend factor ``beta`` (decision, because DRAEM's code and the issue use the word in opposite senses):
    ``beta`` is the **opacity of the anomaly**: inside the region ``out = img + beta * (texture - img)``,
    i.e. ``(1 - beta) * img + beta * texture``. ``beta = 0`` leaves the image unchanged, ``beta = 1`` pastes
    the texture. This is anomalib's ``blend_factor`` convention. DRAEM's reference *code* calls the weight
    of the *original* image ``beta`` and samples it in ``[0, 0.8)`` (the issue's "beta in [0, 0.8)"); the
    same distribution is our default ``beta_range=(0.2, 1.0)``, sampled as ``hi - (hi - lo) * u`` so that
    it is exactly DRAEM's ``(0.2, 1.0]``. ``beta_range=(0, 0)`` switches anomalies off entirely.

Mask and label: ``mask`` is 1 exactly where the output differs from the input (inside the Perlin region and
foreground, where the blend changed at least one channel); every pixel outside the mask is bit-identical to
the input. ``label`` is 1 when the mask has any pixel. When the thresholded field is empty inside the
foreground, the field is redrawn up to ``max_attempts`` times (anomalib: up to 11); a sample whose region is
still empty (or whose foreground is empty) is returned unchanged with label 0.

Randomness: every sample draws everything from its own CPU ``torch.Generator`` seeded with its own seed, in a
fixed order, and the per-pixel work is elementwise; so the same seed gives the same output, and
:meth:`PerlinAnomalyGenerator.batch` gives bit-identical results to calling the generator per sample with
the same seeds (on the same device). The single-sample call *is* the batch call with ``B = 1``.

Where to call it:
    * dataloader workers: wrap the dataset in :class:`common.synthesis.dataset.PerlinAnomalyDataset`, which
      seeds sample ``i`` of epoch ``e`` with ``sample_seed(seed, i, e)``; results do not depend on workers.
    * on the GPU: in ``LightningModule.on_after_batch_transfer``,
      ``res = gen.batch(batch.image, seeds=[sample_seed(seed, i, epoch) for i in indices])`` (or pass a
      ``torch.Generator``); images must still be in ``[0, 1]``, before normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import get_worker_info

from common.synthesis.augment import NUM_DRAWS, TextureAugment, apply_augment, draw_augment
from common.synthesis.perlin import lattice_geometry, perlin_noise_batch, random_gradient_angles
from common.synthesis.seeding import mix_seed
from common.synthesis.textures import TextureBank

_SEED_BOUND = 2**63 - 1
_MASK64 = 2**64 - 1  # seeds are taken modulo 2^64 (any Python int is accepted)
CPU_CHUNK_PIXELS = 2**17
"""On CPU, :meth:`PerlinAnomalyGenerator.batch` works on chunks of at most this many pixels (at least one image)."""
_SCALAR_DRAWS = 3 + NUM_DRAWS  # normal?, beta, texture index, augmentation parameters


@dataclass
class SynthesisResult:
    """Output of :class:`PerlinAnomalyGenerator`; shapes without ``B`` for a single sample.

    Attributes:
        image: ``(B, C, H, W)`` image with the anomaly, dtype and device of the input.
        mask: ``(B, 1, H, W)`` {0, 1} mask of the changed pixels, dtype of the image.
        label: ``(B,)`` int64, 1 where an anomaly was added.
        beta: ``(B,)`` float32 anomaly opacity used (0 where the label is 0).
    """

    image: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor
    beta: torch.Tensor


def _fields(r: SynthesisResult) -> tuple[torch.Tensor, ...]:
    """The fields of a result, in order, without copying (``dataclasses.astuple`` deep-copies)."""
    return (r.image, r.mask, r.label, r.beta)


def _as_region(foreground: torch.Tensor | None, b: int, h: int, w: int, device: torch.device):
    """Foreground as a ``(B, 1, H, W)`` float 0/1 tensor (float input: ``> 0.5``, other: ``!= 0``), or ``None``."""
    if foreground is None:
        return None
    fg = foreground.to(device)
    if fg.ndim == 3:
        fg = fg.unsqueeze(1)
    if fg.shape != (b, 1, h, w):
        raise ValueError(
            f"foreground must be (B, H, W) or (B, 1, H, W) = {(b, 1, h, w)}, got {tuple(foreground.shape)}"
        )
    fg = fg > 0.5 if fg.is_floating_point() else fg != 0
    return fg.float()


class PerlinAnomalyGenerator:
    """DRAEM-style synthetic anomalies from thresholded, rotated Perlin noise (see the module docstring).

    A plain picklable object (no parameters, no buffers), so it can live in a dataset in dataloader workers.

    Args:
        beta_range: Anomaly opacity range ``(lo, hi)`` within ``[0, 1]``; ``beta`` is drawn from
            ``(lo, hi]``. The default equals DRAEM's ``1 - U[0, 0.8)``.
        normal_prob: Probability of leaving a sample normal.
        scale_exp_range: Perlin periods per axis are ``2^e`` with ``e`` uniform in ``[lo, hi)``, per axis.
        threshold: Noise threshold of the anomaly region.
        rotation_range: Rotation of the noise field in degrees, uniform in this range.
        texture_dir: Folder of texture images (e.g. DTD); ``None`` uses the image itself as the source.
        self_augment: Apply random colour/geometry changes to the anomaly source (required when
            ``texture_dir`` is ``None``, otherwise the texture would equal the image).
        augment: Ranges of those changes (``None``: :class:`TextureAugment` defaults).
        max_attempts: Draws of the noise field until its region is non-empty.
        max_cached_textures: Bound on decoded textures kept in memory (``None``: all).
        seed: Seed for calls without explicit seeds: each call then uses the next seed of a stream
            derived from ``(seed, worker id, call count)``, reproducible per seed and worker. ``None`` draws
            seeds from torch's global RNG (which the DataLoader seeds per worker).
    """

    def __init__(
        self,
        beta_range: tuple[float, float] = (0.2, 1.0),
        normal_prob: float = 0.5,
        scale_exp_range: tuple[int, int] = (0, 6),
        threshold: float = 0.5,
        rotation_range: tuple[float, float] = (-90.0, 90.0),
        texture_dir: str | Path | None = None,
        self_augment: bool = True,
        augment: TextureAugment | None = None,
        max_attempts: int = 10,
        max_cached_textures: int | None = None,
        seed: int | None = None,
    ) -> None:
        lo, hi = (float(v) for v in beta_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"beta_range must satisfy 0 <= lo <= hi <= 1, got {beta_range}")
        if not 0.0 <= normal_prob <= 1.0:
            raise ValueError(f"normal_prob must be in [0, 1], got {normal_prob}")
        elo, ehi = (int(v) for v in scale_exp_range)
        if not 0 <= elo < ehi:
            raise ValueError(f"scale_exp_range must satisfy 0 <= lo < hi, got {scale_exp_range}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if texture_dir is None and not self_augment:
            raise ValueError(
                "without texture_dir the anomaly source is the image itself: self_augment must be True"
            )
        self.beta_range = (lo, hi)
        self.normal_prob = float(normal_prob)
        self.scale_exp_range = (elo, ehi)
        self.threshold = float(threshold)
        self.rotation_range = (float(rotation_range[0]), float(rotation_range[1]))
        self.texture_dir = None if texture_dir is None else str(texture_dir)
        self.self_augment = self_augment
        self.augment = augment or TextureAugment()
        self.max_attempts = int(max_attempts)
        self.seed = seed
        self.textures = None if texture_dir is None else TextureBank(texture_dir, max_cached_textures)
        self._calls = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(beta_range={self.beta_range}, normal_prob={self.normal_prob}, "
            f"scale_exp_range={self.scale_exp_range}, threshold={self.threshold}, "
            f"rotation_range={self.rotation_range}, texture_dir={self.texture_dir!r}, "
            f"self_augment={self.self_augment}, seed={self.seed})"
        )

    # ------------------------------------------------------------------ seeds
    def next_seed(self) -> int:
        """The seed of the next call that was given no seed (see ``seed`` in the class docstring)."""
        if self.seed is None:
            return int(torch.randint(0, _SEED_BOUND, (1,)))
        info = get_worker_info()
        seed = mix_seed(self.seed, 0x5EED, -1 if info is None else info.id, self._calls)
        self._calls += 1
        return seed

    def _seeds(self, seeds, b: int, generator: torch.Generator | None) -> list[int]:
        if seeds is not None:
            out = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
            if len(out) != b:
                raise ValueError(f"got {len(out)} seeds for a batch of {b}")
            return out
        if generator is not None:
            return torch.randint(0, _SEED_BOUND, (b,), generator=generator, device=generator.device).tolist()
        return [self.next_seed() for _ in range(b)]

    # ------------------------------------------------------------------ API
    def __call__(
        self,
        image: torch.Tensor,
        foreground: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> SynthesisResult:
        """Adds (or not) an anomaly to one image.

        Args:
            image: ``(C, H, W)`` float image in ``[0, 1]``.
            foreground: Optional ``(H, W)`` or ``(1, H, W)`` mask; anomalies fall only where it is set.
            generator: Draws this sample's seed when ``seed`` is not given.
            seed: This sample's seed (e.g. :func:`common.synthesis.seeding.sample_seed`).

        Returns:
            :class:`SynthesisResult` with ``image (C, H, W)``, ``mask (1, H, W)``, scalar ``label``/``beta``.
        """
        if image.ndim != 3:
            raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
        if foreground is not None:
            if foreground.numel() != image[0].numel():
                raise ValueError(f"foreground must be (H, W) or (1, H, W), got {tuple(foreground.shape)}")
            foreground = foreground.reshape(1, 1, *image.shape[-2:])
        res = self.batch(
            image.unsqueeze(0), foreground, seeds=None if seed is None else [seed], generator=generator
        )
        return SynthesisResult(res.image[0], res.mask[0], res.label[0], res.beta[0])

    @torch.no_grad()
    def batch(
        self,
        images: torch.Tensor,
        foreground: torch.Tensor | None = None,
        seeds: Sequence[int] | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SynthesisResult:
        """Adds anomalies to a batch, on the images' device, sample ``k`` driven only by ``seeds[k]``.

        Args:
            images: ``(B, C, H, W)`` float images in ``[0, 1]`` (any device).
            foreground: Optional ``(B, H, W)`` or ``(B, 1, H, W)`` masks.
            seeds: ``B`` per-sample seeds; drawn from ``generator`` (or :meth:`next_seed`) when ``None``.
            generator: Source of the seeds when ``seeds`` is ``None``.

        Returns:
            :class:`SynthesisResult` with batched fields.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float (B, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}"
            )
        b, c, h, w = images.shape
        device = images.device
        seeds = self._seeds(seeds, b, generator)
        fg = _as_region(foreground, b, h, w, device)
        step = max(1, CPU_CHUNK_PIXELS // (h * w))
        if device.type == "cpu" and b > step:
            # Big CPU batches are memory-bound; chunks that stay in cache are ~3x faster. Results are the same,
            # since every sample only depends on its own seed.
            parts = [
                self._batch(
                    images[i : i + step], None if fg is None else fg[i : i + step], seeds[i : i + step]
                )
                for i in range(0, b, step)
            ]
            return SynthesisResult(*(torch.cat(f) for f in zip(*(_fields(r) for r in parts), strict=True)))
        return self._batch(images, fg, seeds)

    def _batch(self, images: torch.Tensor, fg: torch.Tensor | None, seeds: list[int]) -> SynthesisResult:
        """:meth:`batch` on one chunk, with the foreground already a ``(B, 1, H, W)`` float 0/1 tensor."""
        b, c, h, w = images.shape
        device = images.device
        gens = [torch.Generator().manual_seed(s & _MASK64) for s in seeds]
        draws = [torch.rand(_SCALAR_DRAWS, generator=g, dtype=torch.float64).tolist() for g in gens]
        lo, hi = self.beta_range
        sel = [k for k in range(b) if draws[k][0] >= self.normal_prob]  # samples that get an anomaly

        mask = torch.zeros(b, 1, h, w, dtype=images.dtype, device=device)
        label = torch.zeros(b, dtype=torch.long, device=device)
        beta = torch.zeros(b, dtype=torch.float32, device=device)
        if not sel:
            return SynthesisResult(images.clone(), mask, label, beta)
        everyone = len(sel) == b
        index = None if everyone else torch.tensor(sel, device=device)
        imgs = images if everyone else images.index_select(0, index)  # (A, C, H, W)
        fg_sel = None if fg is None else (fg if everyone else fg.index_select(0, index))

        region = self._region(h, w, [gens[k] for k in sel], fg_sel, device)  # (A, 1, H, W) float 0/1
        texture = self._texture(imgs, [draws[k] for k in sel])  # (A, C, H, W), a fresh tensor
        beta_sel = torch.tensor([hi - (hi - lo) * draws[k][1] for k in sel], dtype=torch.float32)
        weight = region.to(images.dtype).mul_(
            beta_sel.to(device=device, dtype=images.dtype).view(-1, 1, 1, 1)
        )
        # img + w (texture - img): exactly img where w = 0, i.e. outside the region
        out_sel = texture.sub_(imgs).mul_(weight).add_(imgs)  # (A, C, H, W)
        mask_sel = torch.sub(out_sel, imgs).abs_().amax(dim=1, keepdim=True).gt_(0.0)  # (A, 1, H, W) changed
        label_sel = mask_sel.flatten(1).amax(dim=1) > 0  # (A,)
        beta_sel = beta_sel.to(device).mul_(label_sel)
        if everyone:
            return SynthesisResult(out_sel, mask_sel, label_sel.long(), beta_sel)
        out = images.clone()
        out[index] = out_sel
        mask[index] = mask_sel
        label[index] = label_sel.long()
        beta[index] = beta_sel
        return SynthesisResult(out, mask, label, beta)

    # ------------------------------------------------------------------ parts
    def _region(
        self,
        h: int,
        w: int,
        gens: list[torch.Generator],
        fg: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """Thresholded rotated Perlin fields inside the foreground, redrawn while empty.

        Args:
            h: Height H.
            w: Width W.
            gens: The per-sample generators of the A selected samples.
            fg: ``(A, 1, H, W)`` float 0/1 foreground, or ``None``.
            device: Where to compute.

        Returns:
            ``(A, 1, H, W)`` float 0/1.
        """
        n = len(gens)
        region = torch.zeros(n, 1, h, w, device=device)
        pending = list(range(n))
        if fg is not None:
            has_fg = (fg.flatten(1).amax(dim=1) > 0).tolist()
            pending = [k for k in pending if has_fg[k]]
        elo, ehi = self.scale_exp_range
        r0, r1 = self.rotation_range
        for _ in range(self.max_attempts):
            if not pending:
                break
            geos, angles = [], []
            for k in pending:
                v = torch.rand(3, generator=gens[k], dtype=torch.float64).tolist()
                res = (2 ** (elo + int(v[0] * (ehi - elo))), 2 ** (elo + int(v[1] * (ehi - elo))))
                geo = lattice_geometry(h, w, res, r0 + (r1 - r0) * v[2])
                geos.append(geo)
                angles.append(random_gradient_angles(geo, gens[k]))
            hit = (
                perlin_noise_batch(h, w, geos, angles, device).gt_(self.threshold).unsqueeze(1)
            )  # (P, 1, H, W)
            if fg is not None:
                hit.mul_(fg if len(pending) == n else fg[pending])
            found = (hit.flatten(1).amax(dim=1) > 0).tolist()
            if len(pending) == n:
                region = hit
            else:
                region[pending] = hit
            pending = [k for k, ok in zip(pending, found, strict=True) if not ok]
        return region

    def _texture(self, imgs: torch.Tensor, draws: list[list[float]]) -> torch.Tensor:
        """The anomaly source of each selected sample, augmented.

        Args:
            imgs: ``(A, C, H, W)`` the selected images.
            draws: Their scalar draws.

        Returns:
            ``(A, C, H, W)`` texture in the images' dtype.
        """
        a, c, h, w = imgs.shape
        if self.textures is not None:
            n = len(self.textures)
            picks = [min(int(u[2] * n), n - 1) for u in draws]
            src = self.textures.stack(picks, h, w, c).to(imgs.device, non_blocking=True).float().div_(255.0)
        else:
            src = imgs
        if self.self_augment:
            params = torch.tensor(
                [draw_augment(u[3:], self.augment, h, w, c) for u in draws], dtype=torch.float64
            )
            src = apply_augment(src, params)
        return src.to(imgs.dtype, copy=src is imgs)
