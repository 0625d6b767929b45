"""PerlinAnomalyGenerator and PerlinAnomalyDataset: mask semantics, beta, normal probability, seeds, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import common.synthesis.generator as generator_module
from common.synthesis import PerlinAnomalyDataset, PerlinAnomalyGenerator, SynthesisResult, sample_seed


def _images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Random images: every pixel differs from every other, so no texture can coincide with the image."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _textures(root, n: int = 3, size: int = 40):
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(root / f"t{i}.png")
    return root


def _assert_same(a: SynthesisResult, b: SynthesisResult) -> None:
    assert torch.equal(a.image, b.image)
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.label, b.label)
    assert torch.equal(a.beta, b.beta)


def _check_mask_semantics(image: torch.Tensor, res: SynthesisResult) -> None:
    """Mask binary; exactly the changed pixels; label = mask non-empty; untouched pixels bit-identical."""
    assert res.mask.shape == (1, *image.shape[1:]) and res.image.shape == image.shape
    assert set(torch.unique(res.mask).tolist()) <= {0.0, 1.0}
    changed = (res.image != image).any(dim=0, keepdim=True)
    assert torch.equal(changed, res.mask.bool())
    outside = ~res.mask.bool().expand_as(image)
    assert torch.equal(res.image[outside], image[outside])
    assert int(res.label) == int(res.mask.any())
    assert res.image.min() >= 0.0 and res.image.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("texture", [False, True])
def test_masks_are_binary_and_match_changed_pixels(tmp_path, texture):
    gen = PerlinAnomalyGenerator(normal_prob=0.0, texture_dir=_textures(tmp_path) if texture else None)
    images = _images(12)
    labels = []
    for k in range(len(images)):
        res = gen(images[k], seed=k)
        _check_mask_semantics(images[k], res)
        labels.append(int(res.label))
        if res.label:
            assert 0.0 < res.mask.mean() < 1.0
            assert 0.2 < float(res.beta) <= 1.0  # default: DRAEM's 1 - U[0, 0.8)
            # inside the mask the image really moved towards the texture, not by rounding noise
            assert (res.image - images[k]).abs().amax(0)[res.mask[0].bool()].min() > 0
    assert sum(labels) >= 10  # empty noise regions are redrawn, so nearly every sample is anomalous


def test_beta_zero_leaves_image_unchanged():
    gen = PerlinAnomalyGenerator(beta_range=(0.0, 0.0), normal_prob=0.0)
    images = _images(6)
    for k in range(len(images)):
        res = gen(images[k], seed=k)
        assert torch.equal(res.image, images[k])
        assert not res.mask.any() and int(res.label) == 0 and float(res.beta) == 0.0
    batch = gen.batch(images, seeds=range(6))
    assert torch.equal(batch.image, images) and not batch.mask.any() and not batch.label.any()


def test_beta_is_the_opacity_of_the_anomaly():
    images = _images(4)
    full = PerlinAnomalyGenerator(beta_range=(1.0, 1.0), normal_prob=0.0).batch(images, seeds=[1, 2, 3, 4])
    half = PerlinAnomalyGenerator(beta_range=(0.5, 0.5), normal_prob=0.0).batch(images, seeds=[1, 2, 3, 4])
    assert torch.equal(full.beta, torch.ones(4)) and torch.equal(half.beta, torch.full((4,), 0.5))
    # same seeds -> same region and texture; out = img + beta (texture - img)
    torch.testing.assert_close(half.image - images, 0.5 * (full.image - images), atol=1e-6, rtol=0)
    assert torch.equal(full.mask, half.mask)


@pytest.mark.parametrize("normal_prob", [0.0, 0.3, 0.5, 1.0])
def test_normal_probability_is_honoured(normal_prob):
    n = 400
    gen = PerlinAnomalyGenerator(normal_prob=normal_prob, seed=123)
    res = gen.batch(_images(n, size=16), seeds=[sample_seed(5, i) for i in range(n)])
    normal_frac = 1.0 - res.label.float().mean().item()
    tol = 4 * (normal_prob * (1 - normal_prob) / n) ** 0.5 + 0.02  # 4 sigma + rare empty regions
    assert abs(normal_frac - normal_prob) <= tol, (normal_frac, normal_prob)
    if normal_prob == 1.0:
        assert torch.equal(res.image, _images(n, size=16))


def test_same_seed_same_output_and_different_seed_different_output():
    image = _images(1)[0]
    a = PerlinAnomalyGenerator(normal_prob=0.0)(image, seed=42)
    b = PerlinAnomalyGenerator(normal_prob=0.0)(image, seed=42)
    c = PerlinAnomalyGenerator(normal_prob=0.0)(image, seed=43)
    _assert_same(a, b)
    assert not torch.equal(a.image, c.image)
    # a seeded generator gives the same stream of anomalies
    g1, g2 = PerlinAnomalyGenerator(seed=7), PerlinAnomalyGenerator(seed=7)
    for _ in range(4):
        _assert_same(g1(image), g2(image))
    # a torch.Generator drives the seeds too
    r1 = PerlinAnomalyGenerator().batch(_images(3), generator=torch.Generator().manual_seed(0))
    r2 = PerlinAnomalyGenerator().batch(_images(3), generator=torch.Generator().manual_seed(0))
    _assert_same(r1, r2)


def test_batched_equals_per_sample_for_same_seeds(tmp_path, monkeypatch):
    images = _images(7)
    fg = torch.zeros(7, 48, 48)
    fg[:, 8:40, 4:30] = 1.0
    fg[3] = 0.0  # an empty foreground: no anomaly possible
    seeds = [sample_seed(0, i) for i in range(7)]
    for gen in (
        PerlinAnomalyGenerator(normal_prob=0.3),
        PerlinAnomalyGenerator(normal_prob=0.0, texture_dir=_textures(tmp_path)),
    ):
        for foreground in (None, fg):
            batch = gen.batch(images, foreground=foreground, seeds=seeds)
            assert batch.image.shape == images.shape and batch.mask.shape == (7, 1, 48, 48)
            assert batch.label.shape == (7,) and batch.label.dtype == torch.long
            for k in range(7):
                single = gen(
                    images[k], foreground=None if foreground is None else foreground[k], seed=seeds[k]
                )
                _assert_same(
                    single, SynthesisResult(batch.image[k], batch.mask[k], batch.label[k], batch.beta[k])
                )
            # cache-sized CPU chunks give the same result
            monkeypatch.setattr(generator_module, "CPU_CHUNK_PIXELS", 2 * 48 * 48)
            _assert_same(gen.batch(images, foreground=foreground, seeds=seeds), batch)
            monkeypatch.undo()


def test_foreground_confines_anomalies():
    images = _images(8)
    fg = torch.zeros(8, 1, 48, 48, dtype=torch.bool)
    fg[:, :, 10:30, 20:44] = True
    res = PerlinAnomalyGenerator(normal_prob=0.0).batch(images, foreground=fg, seeds=range(8))
    assert res.label.sum() >= 6
    assert not (res.mask.bool() & ~fg).any()
    empty = PerlinAnomalyGenerator(normal_prob=0.0)(images[0], foreground=torch.zeros(48, 48), seed=0)
    assert int(empty.label) == 0 and torch.equal(empty.image, images[0])


def test_texture_folder_errors_name_the_folder(tmp_path):
    image = _images(1)[0]
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        PerlinAnomalyGenerator(normal_prob=0.0, texture_dir=missing)(image, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="empty"):
        PerlinAnomalyGenerator(normal_prob=0.0, texture_dir=empty)(image, seed=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="bad.png.*broken"):
        PerlinAnomalyGenerator(normal_prob=0.0, texture_dir=broken)(image, seed=0)


def test_textures_are_decoded_once(tmp_path, monkeypatch):
    gen = PerlinAnomalyGenerator(normal_prob=0.0, texture_dir=_textures(tmp_path, n=2))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    gen.batch(_images(16), seeds=range(16))
    gen.batch(_images(16), seeds=range(16, 32))
    assert 1 <= len(opened) <= 2


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="self_augment"):
        PerlinAnomalyGenerator(self_augment=False)
    with pytest.raises(ValueError, match="beta_range"):
        PerlinAnomalyGenerator(beta_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="normal_prob"):
        PerlinAnomalyGenerator(normal_prob=1.5)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        PerlinAnomalyGenerator()(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="seeds"):
        PerlinAnomalyGenerator().batch(torch.rand(2, 3, 8, 8), seeds=[1])


def test_greyscale_and_half_precision_images():
    grey = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    res = PerlinAnomalyGenerator(normal_prob=0.0)(grey, seed=1)
    _check_mask_semantics(grey, res)
    half = _images(2).half()
    res = PerlinAnomalyGenerator(normal_prob=0.0).batch(half, seeds=[1, 2])
    assert res.image.dtype == torch.float16 and res.mask.dtype == torch.float16


class _DictDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.images = _images(n, size=24)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        label = 1 if i == 0 else 0
        mask = torch.zeros(1, 24, 24)
        if label:
            mask[:, :4, :4] = 1.0
        return {"image": self.images[i], "mask": mask, "label": label, "index": i}


def _collect(loader) -> dict[int, torch.Tensor]:
    out = {}
    for batch in loader:
        for i, img in zip(batch["index"].tolist(), batch["image"], strict=True):
            out[i] = img
    return out


def test_dataset_wrapper_is_worker_independent_and_follows_the_epoch():
    ds = PerlinAnomalyDataset(_DictDataset(12), PerlinAnomalyGenerator(normal_prob=0.0), seed=3)
    direct = {i: ds[i]["image"] for i in range(12)}
    item0 = ds[0]
    assert int(item0["label"]) == 1 and not item0["synthetic"]  # real defect left as it is
    item = ds[5]
    assert item["synthetic"] and int(item["label"]) == 1 and item["mask"].shape == (1, 24, 24)
    assert torch.equal(
        item["image"], ds.generator(_DictDataset(12)[5]["image"], seed=sample_seed(3, 5)).image
    )

    one = _collect(DataLoader(ds, batch_size=5, shuffle=False, num_workers=0))
    two = _collect(DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, persistent_workers=True))
    for i in range(12):
        assert torch.equal(one[i], direct[i]) and torch.equal(two[i], direct[i])

    # persistent workers see set_epoch through shared memory
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    first = _collect(loader)
    ds.set_epoch(1)
    second = _collect(loader)
    assert ds.epoch == 1
    assert all(torch.equal(first[i], direct[i]) for i in range(12))
    assert not torch.equal(second[5], first[5])
    assert torch.equal(second[5], ds[5]["image"])


def test_seeded_generator_is_reproducible_per_worker():
    class Plain(Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int):
            return gen(_images(1, size=16, seed=i)[0]).image  # no explicit seed: the generator's stream

    gen = PerlinAnomalyGenerator(normal_prob=0.0, seed=11)
    runs = [torch.cat(list(DataLoader(Plain(), batch_size=2, num_workers=2))) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_matches_per_sample_on_cuda():
    images = _images(5).cuda()
    gen = PerlinAnomalyGenerator(normal_prob=0.2)
    seeds = [sample_seed(1, i) for i in range(5)]
    batch = gen.batch(images, seeds=seeds)
    assert batch.image.device.type == "cuda" and batch.mask.device.type == "cuda"
    for k in range(5):
        single = gen(images[k], seed=seeds[k])
        torch.testing.assert_close(single.image, batch.image[k], atol=1e-6, rtol=0)
        assert torch.equal(single.mask, batch.mask[k])
    cpu = gen.batch(images.cpu(), seeds=seeds)
    assert (cpu.mask != batch.mask.cpu()).float().mean() < 1e-3  # same anomalies up to threshold ties
