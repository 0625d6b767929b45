"""Batched torch Perlin noise: agreement with perlin_numpy, lattice property, rotation, batch invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from perlin_numpy import generate_perlin_noise_2d

from common.synthesis.perlin import (
    fade,
    lattice_geometry,
    perlin_noise_2d,
    perlin_noise_batch,
    random_gradient_angles,
)


@pytest.mark.parametrize(
    ("shape", "res"),
    [((64, 64), (1, 1)), ((64, 64), (4, 8)), ((32, 96), (2, 32)), ((128, 64), (32, 16))],
)
def test_matches_perlin_numpy_with_same_gradients(shape, res):
    # perlin_numpy draws its gradient angles as 2 pi * rng.uniform(size=(ry + 1, rx + 1)); replay them
    ref = generate_perlin_noise_2d(shape, res, rng=np.random.default_rng(7))
    angles = 2 * np.pi * np.random.default_rng(7).uniform(size=(res[0] + 1, res[1] + 1))
    ours = perlin_noise_2d(shape, res, torch.from_numpy(angles))
    assert ours.shape == shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)  # float32 vs float64


def test_noise_is_zero_at_lattice_points():
    g = torch.Generator().manual_seed(0)
    res = (4, 8)
    noise = perlin_noise_2d((64, 64), res, generator=g)
    step_r, step_c = 64 // res[0], 64 // res[1]
    on_lattice = noise[::step_r, ::step_c]
    assert on_lattice.shape == res
    assert torch.count_nonzero(on_lattice) == 0
    # ...and clearly non-zero in between
    assert noise[step_r // 2 :: step_r, step_c // 2 :: step_c].abs().mean() > 0.05


def test_fade_curve():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    expected = 6 * t**5 - 15 * t**4 + 10 * t**3
    torch.testing.assert_close(fade(t), expected)


def test_statistics_and_smoothness():
    g = torch.Generator().manual_seed(1)
    fields = torch.stack(
        [perlin_noise_2d((128, 128), (8, 8), generator=g, angle=a) for a in (0.0, 30.0, -75.0)]
    )
    assert fields.abs().max() <= 1.0 + 1e-5  # 2-D gradient noise is within sqrt(2)/2, scaled by sqrt(2)
    assert abs(fields.mean().item()) < 0.1
    assert 0.1 < fields.std().item() < 0.5
    # a continuous field: neighbouring pixels differ by far less than the value range
    assert (fields[:, 1:] - fields[:, :-1]).abs().max() < 0.2
    assert (fields[:, :, 1:] - fields[:, :, :-1]).abs().max() < 0.2


def test_lattice_geometry_covers_rotated_image():
    geo0 = lattice_geometry(256, 256, (4, 16), 0.0)
    assert (geo0.ly, geo0.lx) == (5, 17)
    assert geo0.coef == (4 / 256, -0.0, 0.0, 0.0, 16 / 256, 0.0)
    for angle in (-90.0, -45.0, 13.0, 45.0, 90.0):
        geo = lattice_geometry(100, 60, (8, 2), angle)
        ay, by, cy, ax, bx, cx = geo.coef
        for i in (0, 99):
            for j in (0, 59):
                y, x = ay * i + by * j + cy, ax * i + bx * j + cx
                assert -1e-9 <= y <= geo.ly - 1 and -1e-9 <= x <= geo.lx - 1
    assert lattice_geometry(256, 256, (8, 8), 45.0).ly > lattice_geometry(256, 256, (8, 8), 0.0).ly


def _perlin_at(angles: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Plain numpy Perlin noise at continuous lattice coordinates (an independent reference)."""
    y0 = np.minimum(np.floor(y).astype(int), angles.shape[0] - 2)
    x0 = np.minimum(np.floor(x).astype(int), angles.shape[1] - 2)
    u, v = y - y0, x - x0

    def dot(dy, dx):
        a = angles[y0 + dy, x0 + dx]
        return (u - dy) * np.cos(a) + (v - dx) * np.sin(a)

    tu, tv = 6 * u**5 - 15 * u**4 + 10 * u**3, 6 * v**5 - 15 * v**4 + 10 * v**3
    n0 = dot(0, 0) * (1 - tu) + dot(1, 0) * tu
    n1 = dot(0, 1) * (1 - tu) + dot(1, 1) * tu
    return math.sqrt(2) * (n0 * (1 - tv) + n1 * tv)


def test_rotation_by_90_degrees_turns_the_field():
    # rotating a square image by 90 degrees about its centre sends pixel (i, j) to the unrotated position
    # (H - j, i): the rotated field is the unrotated field of the same lattice, turned
    size, r = 64, 4
    geo = lattice_geometry(size, size, (r, r), 90.0)
    angles = random_gradient_angles(geo, torch.Generator().manual_seed(3))
    rotated = perlin_noise_batch(size, size, [geo], [angles])[0].numpy()
    i, j = np.mgrid[0:size, 0:size].astype(np.float64)
    # the lattice origin is an integer shift of the implementation's choosing: read it from the geometry
    shift_y, shift_x = round(geo.coef[2] - r), round(geo.coef[5])
    expected = _perlin_at(angles.double().numpy(), (size - j) * r / size + shift_y, i * r / size + shift_x)
    np.testing.assert_allclose(rotated, expected, atol=1e-5)
    assert np.abs(rotated).max() > 0.1


def test_rotated_field_matches_reference_at_any_angle():
    size_h, size_w, res, angle = 48, 80, (4, 8), 33.0
    geo = lattice_geometry(size_h, size_w, res, angle)
    angles = random_gradient_angles(geo, torch.Generator().manual_seed(5))
    ours = perlin_noise_batch(size_h, size_w, [geo], [angles])[0].numpy()
    # the documented mapping: rotate pixel positions about (H/2, W/2), scale to lattice units, shift
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    i, j = np.mgrid[0:size_h, 0:size_w].astype(np.float64)
    yp = size_h / 2 + c * (i - size_h / 2) - s * (j - size_w / 2)
    xp = size_w / 2 + s * (i - size_h / 2) + c * (j - size_w / 2)
    y, x = yp * res[0] / size_h, xp * res[1] / size_w
    y, x = y - np.floor(y.min()), x - np.floor(x.min())
    expected = _perlin_at(angles.double().numpy(), y, x)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_batch_equals_single_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    specs = [((1, 32), 30.0), ((8, 8), -80.0), ((32, 32), 45.0), ((2, 1), 0.0)]
    geos = [lattice_geometry(96, 64, res, angle) for res, angle in specs]
    angles = [random_gradient_angles(geo, g) for geo in geos]
    batch = perlin_noise_batch(96, 64, geos, angles)
    assert batch.shape == (4, 96, 64)
    for k in range(4):
        single = perlin_noise_batch(96, 64, [geos[k]], [angles[k]])[0]
        assert torch.equal(single, batch[k])
    # and in a different batch order
    again = perlin_noise_batch(96, 64, geos[::-1], angles[::-1])
    assert torch.equal(again.flip(0), batch)


def test_shape_need_not_be_a_multiple_of_res():
    noise = perlin_noise_2d((50, 30), (32, 4), generator=torch.Generator().manual_seed(0), angle=20.0)
    assert noise.shape == (50, 30) and torch.isfinite(noise).all()


def test_rejects_mismatched_gradient_table():
    geo = lattice_geometry(32, 32, (2, 2))
    with pytest.raises(ValueError, match="gradient angles"):
        perlin_noise_batch(32, 32, [geo], [torch.zeros(2, 2)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    geos = [lattice_geometry(128, 128, (8, 16), 33.0), lattice_geometry(128, 128, (1, 2), -10.0)]
    angles = [random_gradient_angles(geo, g) for geo in geos]
    cpu = perlin_noise_batch(128, 128, geos, angles)
    gpu = perlin_noise_batch(128, 128, geos, angles, device="cuda")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
