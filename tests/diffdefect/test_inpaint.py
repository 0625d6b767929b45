"""Defect inpainting (RePaint-style known-region replacement): known pixels kept, masked pixels changed, the
MVTec layout it writes is read back by the MVTec reader, and the `sample --synthesize --normals` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import MVTecReader
from diffdefect.stage1.inpaint import inpaint, load_masks, mask_prompt, perlin_masks, synthesize_inpainted
from diffdefect.stage1.sampling import generate
from diffdefect.stage1.sampling import main as sample_main
from tests.diffdefect.conftest import tiny_model


def _inputs(n: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 4:10, 5:12] = 1.0
    return images, masks


def test_inpaint_keeps_the_known_region_and_changes_the_mask() -> None:
    model = tiny_model(cfg_dropout=0.1).eval()
    images, masks = _inputs()
    out = inpaint(model, images, masks, ["a plate with a hole", "a fabric with a stain"], steps=3, guidance=2.0)
    assert out.shape == images.shape
    keep = masks.expand_as(images) == 0
    torch.testing.assert_close(out[keep], images[keep], rtol=0, atol=0)  # exactly the input outside the mask
    inside = (out - images).abs()[~keep]
    assert inside.mean() > 0.05  # the masked region is generated, not copied
    # deterministic in the seed, and the replacement is what keeps it: plain generation differs outside the mask
    torch.testing.assert_close(inpaint(model, images, masks, ["a plate with a hole", "a fabric with a stain"], steps=3,
                                       guidance=2.0), out)
    free = generate(model, ["a plate with a hole", "a fabric with a stain"], steps=3, guidance=2.0)
    assert (free - images).abs()[keep].mean() > 0.05


def test_inpaint_input_errors() -> None:
    model = tiny_model().eval()
    images, masks = _inputs()
    with pytest.raises(ValueError, match="both known images and masks"):
        generate(model, ["a", "b"], known=images)
    with pytest.raises(ValueError, match="2 images to inpaint but 1 prompts"):
        inpaint(model, images, masks, ["a"], steps=1)
    with pytest.raises(ValueError, match="masks must be"):
        inpaint(model, images, masks[:, :, :8], ["a", "b"], steps=1)
    with pytest.raises(ValueError, match="multiple of the VAE"):
        inpaint(model, torch.rand(1, 3, 15, 15), torch.ones(1, 1, 15, 15), ["a"], steps=1)


def test_perlin_masks_are_one_blob_in_the_area_range() -> None:
    from scipy import ndimage

    masks = perlin_masks(4, 64, seed=3, area=(0.01, 0.1))
    assert masks.shape == (4, 1, 64, 64)
    for m in masks[:, 0].numpy():
        assert 0.01 <= m.mean() <= 0.1 and ndimage.label(m > 0.5)[1] == 1
    torch.testing.assert_close(perlin_masks(4, 64, seed=3, area=(0.01, 0.1)), masks)
    assert not torch.equal(perlin_masks(4, 64, seed=4, area=(0.01, 0.1)), masks)


def test_load_masks_and_the_prompt_follows_the_mask(tmp_path: Path) -> None:
    arr = np.zeros((32, 32), np.uint8)
    arr[2:8, 2:8] = 255  # upper left
    Image.fromarray(arr).save(tmp_path / "m.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "empty.png")
    m = load_masks([tmp_path / "m.png"], 16)
    assert m.shape == (1, 1, 16, 16) and m[0, 0, 2, 2] == 1 and m[0, 0, 10, 10] == 0
    with pytest.raises(ValueError, match="empty.png: the mask is empty"):
        load_masks([tmp_path / "empty.png"], 16)
    prompt = mask_prompt("plate", "stain", m[0, 0].numpy() > 0.5, "x")
    assert "upper left" in prompt and "stain" in prompt and "plate" in prompt


def test_synthesize_inpainted_writes_mvtec_layout_the_reader_reads(tmp_path: Path) -> None:
    model = tiny_model(cfg_dropout=0.1).eval()
    images, masks = _inputs(3)
    manifest = synthesize_inpainted(model, images, masks, tmp_path, "plate", ["scratch", "hole"], steps=2)
    records = MVTecReader(tmp_path).records()
    types = sorted(r.defect_type for r in records if r.is_anomalous)
    assert types == ["hole"] * 3 + ["scratch"] * 3
    for r in records:
        if r.is_anomalous:
            gen = np.asarray(Image.open(r.image_path), np.float32)
            mask = np.asarray(Image.open(r.mask_path)) > 127
            src = np.asarray(Image.open(tmp_path / "plate" / "train" / "good" / r.image_path.name), np.float32)
            assert mask.sum() == int(masks[0, 0].sum())
            assert np.abs(gen - src)[~mask].max() == 0 and np.abs(gen - src)[mask].mean() > 5
    lines = [json.loads(ln) for ln in manifest.read_text().splitlines()]
    assert len(lines) == 6 and {ln["defect_type"] for ln in lines} == {"scratch", "hole"}
    assert all("plate" in ln["caption"] and ln["mask"].endswith("_mask.png") for ln in lines)
    # a second object adds its lines; re-running an object rewrites only its own
    synthesize_inpainted(model, images[:1], masks[:1], tmp_path, "fabric", ["stain"], steps=2)
    synthesize_inpainted(model, images[:1], masks[:1], tmp_path, "fabric", ["stain"], steps=2)
    objects = [json.loads(ln)["object"] for ln in manifest.read_text().splitlines()]
    assert objects.count("plate") == 6 and objects.count("fabric") == 1


def test_sample_command_synthesize_with_normals_and_mask_folder(stage1_ckpt: Path, demo_root: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    sample_main(["--ckpt", str(stage1_ckpt), "--synthesize", "--normals", str(demo_root / "plate" / "train" / "good"),
                 "--masks", str(demo_root / "plate" / "ground_truth" / "hole"), "--objects", "plate",
                 "--defects", "stain", "--per-class", "2", "--steps", "2", "--out", str(out), "--device", "cpu"])
    records = MVTecReader(out).records()
    assert sorted(r.defect_type for r in records) == ["good", "good", "stain", "stain"]
    sample_main(["--ckpt", str(stage1_ckpt), "--synthesize", "--normals", str(demo_root / "plate" / "train" / "good"),
                 "--masks", "perlin", "--objects", "plate", "--defects", "scratch", "--per-class", "2", "--steps", "2",
                 "--out", str(tmp_path / "perlin"), "--device", "cpu"])
    assert len(list((tmp_path / "perlin" / "plate" / "ground_truth" / "scratch").glob("*_mask.png"))) == 2
