"""Random colour and geometry changes of the anomaly source, batched with per-sample parameters.

DRAEM picks 3 of 9 imgaug augmenters for its DTD texture; anomalib uses 3 of 10 torchvision transforms. Here
every sample gets the same fixed pipeline with its own parameters, each step a cheap elementwise op:

geometry (one gather): random flips, transpose (square images; with the flips this gives every rotation by
90 degrees), cyclic roll by 25-75% of the side (so a self-sourced texture never lines up with the image) and a
channel permutation; colour: saturation, contrast and brightness (a "hue-ish" jitter together with the channel
permutation), then with some probability inversion, solarisation and posterisation.

All per-pixel ops are elementwise with per-sample broadcast parameters, so a sample's output does not depend
on the rest of the batch (bit-identical alone or batched).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# the 6 orderings of 3 channels; index 0 is the identity
_PERMUTATIONS_3 = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


@dataclass(frozen=True)
class TextureAugment:
    """Ranges of the random texture changes (the defaults are a DRAEM-like mix).

    Attributes:
        flip_prob: Probability of flipping rows, and (independently) columns.
        transpose_prob: Probability of swapping the axes (square images only).
        roll_range: Cyclic shift as a fraction of the side, drawn per axis from this range.
        channel_shuffle: Randomly permute RGB channels.
        saturation_range: Saturation factor (0 = grey, 1 = unchanged); RGB only.
        contrast_range: Contrast factor around 0.5.
        brightness_range: Added brightness.
        invert_prob: Probability of ``1 - x``.
        solarize_prob: Probability of inverting pixels above a threshold.
        solarize_range: Range of that threshold.
        posterize_prob: Probability of quantising to ``2^bits`` levels.
        posterize_bits: Inclusive range of ``bits``.
    """

    flip_prob: float = 0.5
    transpose_prob: float = 0.5
    roll_range: tuple[float, float] = (0.25, 0.75)
    channel_shuffle: bool = True
    saturation_range: tuple[float, float] = (0.0, 2.0)
    contrast_range: tuple[float, float] = (0.5, 2.0)
    brightness_range: tuple[float, float] = (-0.25, 0.25)
    invert_prob: float = 0.2
    solarize_prob: float = 0.2
    solarize_range: tuple[float, float] = (0.25, 0.75)
    posterize_prob: float = 0.2
    posterize_bits: tuple[int, int] = (1, 4)


NUM_DRAWS = 14
"""Uniform numbers one sample consumes for its augmentation parameters."""


def _lerp(rng: tuple[float, float], u: float) -> float:
    return rng[0] + (rng[1] - rng[0]) * u


def draw_augment(
    u: Sequence[float], cfg: TextureAugment, height: int, width: int, channels: int
) -> tuple[float, ...]:
    """Maps :data:`NUM_DRAWS` uniforms to one sample's parameters.

    Args:
        u: ``NUM_DRAWS`` numbers in ``[0, 1)``.
        cfg: The ranges.
        height: Image height H.
        width: Image width W.
        channels: Channels C.

    Returns:
        ``(flip_r, flip_c, transpose, roll_r, roll_c, perm, saturation, contrast, brightness, invert,
        solarize, solarize_threshold, posterize, levels)`` as floats (flags are 0/1).
    """
    transpose = float(height == width and u[2] < cfg.transpose_prob)
    perm = float(int(u[5] * 6) if channels == 3 and cfg.channel_shuffle else 0)
    lo, hi = cfg.posterize_bits
    bits = min(lo + int(u[13] * (hi - lo + 1)), hi)
    return (
        float(u[0] < cfg.flip_prob),
        float(u[1] < cfg.flip_prob),
        transpose,
        float(int(_lerp(cfg.roll_range, u[3]) * height) % height),
        float(int(_lerp(cfg.roll_range, u[4]) * width) % width),
        perm,
        _lerp(cfg.saturation_range, u[6]),
        _lerp(cfg.contrast_range, u[7]),
        _lerp(cfg.brightness_range, u[8]),
        float(u[9] < cfg.invert_prob),
        float(u[10] < cfg.solarize_prob),
        _lerp(cfg.solarize_range, u[11]),
        float(u[12] < cfg.posterize_prob),
        float(2**bits),
    )


def _source_index(params: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """Flat source index of every output element: the geometry and channel permutation as one gather.

    Args:
        params: ``(B, 14)`` float64 parameters from :func:`draw_augment` (on the target device).
        channels: C.
        height: H.
        width: W.

    Returns:
        ``(B * C * H * W,)`` indices into the flattened ``(B, C, H, W)`` source (int32 when it fits).
    """
    b = params.shape[0]
    dev = params.device
    itype = torch.int32 if b * channels * height * width < 2**31 else torch.int64
    p = params.to(itype)
    rows = torch.arange(height, device=dev, dtype=itype).expand(b, height)
    cols = torch.arange(width, device=dev, dtype=itype).expand(b, width)
    r = torch.where(p[:, 0:1] != 0, height - 1 - rows, rows).add_(p[:, 3:4]).remainder_(height)  # (B, H)
    c = torch.where(p[:, 1:2] != 0, width - 1 - cols, cols).add_(p[:, 4:5]).remainder_(width)  # (B, W)
    if height == width:
        tr = p[:, 2:3] != 0
        pi = torch.where(tr, c, r * width)  # output row i reads source row r(i), or column c(i) if transposed
        qj = torch.where(tr, r * width, c)
    else:
        pi, qj = r * width, c
    if channels == 3:
        perms = torch.tensor(_PERMUTATIONS_3, device=dev, dtype=itype)[p[:, 5].long()]  # (B, 3)
    else:
        perms = torch.arange(channels, device=dev, dtype=itype).expand(b, channels)
    batch = torch.arange(b, device=dev, dtype=itype).view(b, 1) * channels
    chan = (perms + batch) * (height * width)  # (B, C) offset of each source plane
    idx = (chan.view(b, channels, 1) + pi.view(b, 1, height)).view(b, channels, height, 1)
    return (idx + qj.view(b, 1, 1, width)).view(-1)


def apply_augment(src: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Applies per-sample geometry and colour changes.

    Optional steps (invert, solarise, posterise) are blended in with their 0/1 flag, ``t + f * (g(t) - t)``,
    which leaves ``t`` bit-identical where ``f = 0``; they are skipped when no sample of the batch uses them.

    Args:
        src: ``(B, C, H, W)`` float in ``[0, 1]``.
        params: ``(B, 14)`` float64 rows from :func:`draw_augment` (CPU).

    Returns:
        ``(B, C, H, W)`` float32 in ``[0, 1]`` (a new tensor).
    """
    b, ch, h, w = src.shape
    invert, solarize, posterize = params[:, [9, 10, 12]].bool().any(0).tolist()  # read before any transfer
    params = params.to(src.device)
    idx = _source_index(params, ch, h, w)
    t = src.float().reshape(-1).index_select(0, idx).view(b, ch, h, w)  # (B, C, H, W), a fresh tensor
    q = params.float().view(b, -1, 1, 1, 1).unbind(1)  # 14 x (B, 1, 1, 1)
    if ch == 3:
        grey = t[:, 0:1] + t[:, 1:2]
        grey.add_(t[:, 2:3]).mul_(1.0 / 3.0)  # (B, 1, H, W)
        t.sub_(grey).mul_(q[6]).add_(grey)  # saturation: grey + s (t - grey)
    t.sub_(0.5).mul_(q[7]).add_(q[8] + 0.5).clamp_(0.0, 1.0)  # contrast around 0.5, brightness
    if invert:
        t.add_(torch.mul(t, -2.0).add_(1.0).mul_(q[9]))  # t + f (1 - 2t)
    if solarize:
        above = torch.sub(t, q[11]).sign_().clamp_(min=0.0).mul_(q[10])  # f [t > threshold]
        t.add_(torch.mul(t, -2.0).add_(1.0).mul_(above))
    if posterize:
        t.add_(torch.mul(t, q[13]).floor_().div_(q[13]).sub_(t).mul_(q[12]))  # t + f (floor(t L) / L - t)
    return t.clamp_(0.0, 1.0)
