"""Batched 2-D Perlin noise in torch, with per-sample lattice scales and rotations.

``perlin_numpy.generate_perlin_noise_2d`` (what DRAEM uses) is numpy-only, draws one field per call and
rotates the result afterwards with imgaug; anomalib's port is torch but still one field per call and rotates
with a bilinear ``RandomAffine``. Here a whole batch is evaluated in one vectorised pass on the tensors' device
(CPU or CUDA), every sample with its own lattice resolution ``res = (ry, rx)`` and rotation angle.

Rotation is done analytically: instead of resampling a finished noise image (which blurs it and needs padding
at the corners), each pixel's *rotated* coordinate is mapped onto the gradient lattice and the noise is
evaluated there. The lattice is made large enough to cover the rotated image. With angle 0 the field is
exactly ``perlin_numpy``'s: pixel ``(i, j)`` sits at lattice coordinate ``(i * ry / H, j * rx / W)``, the
gradient at lattice point ``(p, q)`` is ``(cos a[p, q], sin a[p, q])`` for the angle table ``a`` and the fade
curve is ``6t^5 - 15t^4 + 10t^3``.

Determinism: the per-pixel work uses only elementwise ``+ - * floor`` and a gather, so a sample's noise is
bit-identical whether it is computed alone or inside any batch (no reductions or transcendental functions on
per-pixel data, whose vectorised and scalar code paths can round differently). The gradient tables (small)
are built per sample on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SQRT2 = math.sqrt(2.0)


def fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade curve ``6t^5 - 15t^4 + 10t^3`` (Horner form, as ``perlin_numpy``).

    Args:
        t: Tensor of any shape, values in ``[0, 1]``.

    Returns:
        Tensor of the same shape.
    """
    return (((t * 6.0 - 15.0) * t + 10.0) * t) * t * t  # the op order of _fade_into


@dataclass(frozen=True)
class LatticeGeometry:
    """Where one sample's pixels fall on its gradient lattice.

    Lattice coordinates are affine in the pixel indices: ``y = ay * i + by * j + cy`` and
    ``x = ax * i + bx * j + cx``, with the origin shifted so that every pixel maps into
    ``[0, ly - 1] x [0, lx - 1]``.

    Attributes:
        coef: ``(ay, by, cy, ax, bx, cx)``.
        ly: Lattice points along the first (row) axis.
        lx: Lattice points along the second (column) axis.
    """

    coef: tuple[float, float, float, float, float, float]
    ly: int
    lx: int


def lattice_geometry(height: int, width: int, res: tuple[int, int], angle: float = 0.0) -> LatticeGeometry:
    """Maps a ``height x width`` image rotated by ``angle`` onto a lattice with ``res`` periods per axis.

    The image is rotated about its centre in pixel space, then pixel units are scaled to lattice units
    (``ry / height`` per row, ``rx / width`` per column). For ``angle == 0`` the lattice has exactly
    ``(ry + 1, rx + 1)`` points and the mapping is ``perlin_numpy``'s.

    Args:
        height: Image height H.
        width: Image width W.
        res: Periods ``(ry, rx)`` of noise along rows and columns (positive ints).
        angle: Rotation in degrees (counter-clockwise).

    Returns:
        The :class:`LatticeGeometry` of this sample.
    """
    ry, rx = int(res[0]), int(res[1])
    if ry < 1 or rx < 1:
        raise ValueError(f"res must be positive, got {res}")
    sy, sx = ry / height, rx / width
    if angle == 0.0:
        cos, sin = 1.0, 0.0
    else:
        rad = math.radians(angle)
        cos, sin = math.cos(rad), math.sin(rad)
    ci, cj = height / 2.0, width / 2.0
    # rotated pixel position: p' = c + R (p - c), then scaled to lattice units
    ay, by, cy = sy * cos, -sy * sin, sy * (ci - cos * ci + sin * cj)
    ax, bx, cx = sx * sin, sx * cos, sx * (cj - sin * ci - cos * cj)
    corners = [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1)]
    ys = [ay * i + by * j + cy for i, j in corners]
    xs = [ax * i + bx * j + cx for i, j in corners]
    oy, ox = math.floor(min(ys)), math.floor(min(xs))
    ly = math.floor(max(ys)) - oy + 2
    lx = math.floor(max(xs)) - ox + 2
    return LatticeGeometry((ay, by, cy - oy, ax, bx, cx - ox), ly, lx)


def _corner_table(angles: torch.Tensor) -> torch.Tensor:
    """Per lattice cell, the gradients of its four corners.

    Args:
        angles: ``(ly, lx)`` gradient angles in radians.

    Returns:
        ``(8, ly - 1, lx - 1)``: cos/sin of the corners (0,0), (1,0), (0,1), (1,1) (row offset first).
    """
    gc, gs = torch.cos(angles), torch.sin(angles)  # float64 in, so the table matches numpy's to 1 ulp
    return torch.stack(
        [
            gc[:-1, :-1], gs[:-1, :-1],
            gc[1:, :-1], gs[1:, :-1],
            gc[:-1, 1:], gs[:-1, 1:],
            gc[1:, 1:], gs[1:, 1:],
        ]
    )  # fmt: skip


def perlin_noise_batch(
    height: int,
    width: int,
    geometries: Sequence[LatticeGeometry],
    gradient_angles: Sequence[torch.Tensor],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Evaluates one Perlin field per sample, all in one vectorised pass.

    Args:
        height: Output height H.
        width: Output width W.
        geometries: Per sample, its :class:`LatticeGeometry` (from :func:`lattice_geometry`).
        gradient_angles: Per sample, ``(ly, lx)`` gradient angles in radians matching its geometry.
        device: Device of the output (the per-pixel work runs there).

    Returns:
        ``(B, H, W)`` float32 noise, roughly in ``[-1, 1]`` (``sqrt(2)`` scaled, as ``perlin_numpy``).
    """
    b = len(geometries)
    if b != len(gradient_angles):
        raise ValueError(f"{b} geometries but {len(gradient_angles)} gradient tables")
    device = torch.device("cpu") if device is None else torch.device(device)
    cy_max = max(g.ly for g in geometries) - 1
    cx_max = max(g.lx for g in geometries) - 1
    # (8, B, Cy, Cx) zero-padded table of the corner gradients of each lattice cell
    table = torch.zeros(8, b, cy_max, cx_max)
    for k, (geo, ang) in enumerate(zip(geometries, gradient_angles, strict=True)):
        if tuple(ang.shape) != (geo.ly, geo.lx):
            raise ValueError(
                f"sample {k}: gradient angles {tuple(ang.shape)} != lattice ({geo.ly}, {geo.lx})"
            )
        table[:, k, : geo.ly - 1, : geo.lx - 1] = _corner_table(ang.detach().cpu().double()).float()
    table = table.reshape(8, -1).to(device, non_blocking=True)
    params = torch.tensor(
        [[*g.coef, g.ly - 2, g.lx - 2, k * cy_max * cx_max] for k, g in enumerate(geometries)],
        dtype=torch.float32,
    ).to(device)
    p = params.view(b, 9, 1, 1).unbind(1)  # 9 x (B, 1, 1)
    rows = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1)
    cols = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)

    # In-place ops into one workspace: far fewer allocations (they dominate on CPU at these sizes).
    ws = torch.empty(7, b, height, width, device=device)
    u, v, n10, n01, n11, t0, t1 = ws.unbind(0)  # each (B, H, W)
    n00 = torch.empty(b, height, width, device=device)  # the result; does not keep the workspace alive
    torch.add(p[0] * rows, p[1] * cols + p[2], out=u)  # lattice row coordinate
    torch.add(p[3] * rows, p[4] * cols + p[5], out=v)  # lattice column coordinate
    torch.floor(u, out=t0).clamp_(min=0.0)  # cell row, clamped into the sample's own lattice
    torch.floor(v, out=t1).clamp_(min=0.0)
    torch.minimum(t0, p[6], out=t0)
    torch.minimum(t1, p[7], out=t1)
    u.sub_(t0)  # position inside the cell
    v.sub_(t1)
    cell = t0.mul_(float(cx_max)).add_(t1).add_(p[8]).int().view(-1)  # flat index into the table
    g = table.index_select(1, cell).view(8, b, height, width)  # (8, B, H, W) corner gradients

    torch.mul(u, g[0], out=n00).add_(torch.mul(v, g[1], out=t0))  # n00 = u g00 + v g00'
    torch.sub(u, 1.0, out=t1)  # u - 1
    torch.mul(t1, g[2], out=n10).add_(torch.mul(v, g[3], out=t0))
    torch.mul(t1, g[6], out=n11)
    torch.sub(v, 1.0, out=t1)  # v - 1
    n11.add_(torch.mul(t1, g[7], out=t0))
    torch.mul(t1, g[5], out=n01).add_(torch.mul(u, g[4], out=t0))
    _fade_into(u, t0)  # tu
    _fade_into(v, t1)  # tv
    n00.add_(n10.sub_(n00).mul_(t0))  # n0: interpolate along rows
    n01.add_(n11.sub_(n01).mul_(t0))  # n1
    n00.add_(n01.sub_(n00).mul_(t1))  # then along columns
    return n00.mul_(SQRT2)


def _fade_into(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """:func:`fade` of ``t`` written into ``out`` (no temporaries); the same ops in the same order."""
    torch.mul(t, 6.0, out=out).sub_(15.0).mul_(t).add_(10.0)  # t (t 6 - 15) + 10
    return out.mul_(t).mul_(t).mul_(t)


def perlin_noise_2d(
    shape: tuple[int, int],
    res: tuple[int, int],
    gradient_angles: torch.Tensor | None = None,
    angle: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One Perlin field; with ``angle=0`` the same field as ``perlin_numpy.generate_perlin_noise_2d``.

    Args:
        shape: ``(H, W)``; unlike ``perlin_numpy`` it need not be a multiple of ``res``.
        res: Periods ``(ry, rx)`` along rows and columns.
        gradient_angles: ``(ly, lx)`` angles in radians (for ``angle=0``: ``(ry + 1, rx + 1)``, the values
            ``2 * pi * rng.uniform(size=(ry + 1, rx + 1))`` that ``perlin_numpy`` draws). Drawn uniformly
            from ``generator`` when ``None``.
        angle: Rotation of the field in degrees.
        generator: CPU random generator for the gradient angles.
        device: Device of the output.

    Returns:
        ``(H, W)`` float32 noise.
    """
    geo = lattice_geometry(shape[0], shape[1], res, angle)
    if gradient_angles is None:
        gradient_angles = random_gradient_angles(geo, generator)
    return perlin_noise_batch(shape[0], shape[1], [geo], [gradient_angles], device)[0]


def random_gradient_angles(geo: LatticeGeometry, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform gradient angles in ``[0, 2 pi)`` for a lattice.

    Args:
        geo: The lattice.
        generator: CPU random generator.

    Returns:
        ``(ly, lx)`` float32 angles.
    """
    return torch.rand(geo.ly, geo.lx, generator=generator).mul_(2.0 * math.pi)
