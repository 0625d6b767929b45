"""Images as they come (issue 13): letterbox keeps shapes, tile mode finds a thin scratch in a long image with a
box in the file's pixels, stitching is exact, padding never reaches metrics or image scores, groups stay in one
split, and the training order, augmentation and tiles follow the seed only."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from clipmdc.explain import explain_outputs
from clipmdc.metrics import CLIPMDCMetrics
from common.data import DefectDataModule, FolderReader
from common.data.dataset import DefectDataset, collate_samples
from common.data.sampling import SeededSampler
from common.data.splits import record_groups, stratified_split
from common.data.tiling import TileSpec, letterbox_box, ramp_window, starts, to_original
from common.data.transforms import build_transform
from common.data.types import SampleRecord
from common.tiled import mode_outputs
from tests.conftest import write_image


def brightness(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """A translation-equivariant stand-in model: the anomaly map is the pixel brightness (a bright defect on a
    dark part is found exactly where it is), the image score its mean, two defect types 30/70."""
    amap = image.mean(1, keepdim=True)  # (n, 1, h, w)
    n = len(image)
    return {"anomaly_prob": amap, "image_prob": amap.flatten(1).mean(1),
            "type_prob": torch.tensor([[0.5, 0.15, 0.35]]).expand(n, 3)}


def _dataset(paths: list[Path], resize: str, size: int, tiles=None) -> DefectDataset:
    records = [SampleRecord(p, "part", "good", None) for p in paths]
    return DefectDataset(records, ["good", "scratch", "dent"], ["part"], build_transform(size, "none", resize=resize),
                         resize=resize, image_size=size, tiles=tiles)


def _regions(dataset: DefectDataset, pixel_threshold: float = 0.5) -> list[dict]:
    batch = collate_samples([dataset[0]])
    out = mode_outputs(brightness, batch.image, batch.content_box, batch.tiling)
    (pred,) = explain_outputs(out, batch, ["good", "scratch", "dent"], image_threshold=0.0,
                              pixel_threshold=pixel_threshold)
    assert pred.record["map_size"] == list(pred.anomaly_map.shape) == [int(v) for v in batch.orig_size[0]]
    return pred.record["regions"]


def test_tile_mode_finds_a_thin_scratch_in_a_long_image_with_a_box_in_file_pixels(tmp_path) -> None:
    """2048 x 512 (W x H) image, a 6-px-wide scratch: tiles of 128 px at native scale find it, and the region box
    is within 4 px of the truth in the file's pixels (stretching it to 128 x 128 would squash it to 1.5 px)."""
    img = np.full((512, 2048, 3), 30, np.uint8)
    x0, x1, y0, y1 = 1500, 1506, 100, 400  # a vertical 6-px scratch
    img[y0:y1, x0:x1] = 240
    path = write_image(tmp_path / "long.png", img)
    regions = _regions(_dataset([path], "tile", 128, TileSpec((128, 128), 0.25, 8)))
    assert len(regions) == 1
    box = regions[0]["box"]
    assert max(abs(a - b) for a, b in zip(box, (x0, y0, x1, y1), strict=True)) <= 4, box
    # the same image stretched to the model size: the scratch is no longer 6 px wide in the model's view
    stretched = _dataset([path], "stretch", 128)
    assert float(collate_samples([stretched[0]]).image.mean(1).amax()) < 0.7


def test_letterbox_keeps_a_circle_a_circle_and_boxes_in_file_pixels(tmp_path) -> None:
    img = np.full((200, 800, 3), 20, np.uint8)  # H x W = 200 x 800
    yy, xx = np.mgrid[:200, :800]
    disk = (yy - 100) ** 2 + (xx - 500) ** 2 <= 60 ** 2
    img[disk] = 250
    path = write_image(tmp_path / "wide.png", img)
    item = _dataset([path], "letterbox", 96)[0]
    seen = item["image"].mean(0) > 0.5  # the disk in the model's input
    ys, xs = np.nonzero(seen.numpy())
    assert abs((np.ptp(xs) + 1) - (np.ptp(ys) + 1)) <= 1  # as wide as high: a circle, not an ellipse
    assert item["content_box"] == letterbox_box(200, 800, (96, 96)) == (0, 36, 96, 60)
    stretched = _dataset([path], "stretch", 96)[0]["image"].mean(0) > 0.5
    ys, xs = np.nonzero(stretched.numpy())
    assert (np.ptp(ys) + 1) > 2 * (np.ptp(xs) + 1)  # stretch squashes it into an ellipse
    (region,) = _regions(_dataset([path], "letterbox", 96))
    x0, y0, x1, y1 = region["box"]
    assert abs(x0 - 440) <= 5 and abs(x1 - 561) <= 5 and abs(y0 - 40) <= 5 and abs(y1 - 161) <= 5


def test_stitched_map_of_a_one_tile_image_equals_the_single_pass_map() -> None:
    from clipmdc.presets import tiny

    model = tiny().eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(x)
        return {"anomaly_prob": out.anomaly_prob, "image_prob": out.image_prob, "type_prob": out.type_prob_image}

    with torch.no_grad():
        single = fn(image)["anomaly_prob"]
        tiled = mode_outputs(fn, image, tiling=TileSpec((64, 64), 0.25, 4))["anomaly_prob"]
    assert torch.equal(tiled, single)


def test_overlapping_tiles_stitch_back_exactly() -> None:
    """For a map that is the same whichever tile computes it, blending reproduces it everywhere (no seams)."""
    image = torch.rand(1, 3, 150, 333, generator=torch.Generator().manual_seed(1))
    tiled = mode_outputs(brightness, image, tiling=TileSpec((64, 64), 0.3, 5))["anomaly_prob"]
    assert torch.allclose(tiled, image.mean(1, keepdim=True), atol=1e-6)
    assert starts(333, 64, 0.3)[-1] == 333 - 64 and starts(40, 64, 0.3) == [0]
    assert ramp_window((64, 64), 0.25).min() > 0


def test_padded_pixels_never_reach_metrics_or_image_scores() -> None:
    """Letterbox padding: a map that is 1 there (and 0.2 on the image) scores 0.2, and the pixel metrics equal
    those of the image's own pixels alone."""
    amap = torch.full((2, 1, 32, 32), 0.2)
    amap[:, :, :8] = 1.0  # the padding rows (content box y from 8)
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 10:14, 10:20] = 1
    amap[0, :, 10:14, 10:20] = 0.9
    box = torch.tensor([[0, 8, 32, 32], [0, 8, 32, 32]])
    out = mode_outputs(lambda x: {"anomaly_prob": amap, "image_prob": torch.ones(2),
                                  "type_prob": torch.tensor([[0.1, 0.9]]).expand(2, 2)}, torch.zeros(2, 3, 32, 32), box)
    assert torch.allclose(out["image_prob"], torch.tensor([0.9, 0.2]))
    assert torch.allclose(out["type_prob"][:, 0], torch.tensor([0.1, 0.8]))
    padded, cropped = CLIPMDCMetrics("t/", 2, mode="exact"), CLIPMDCMetrics("t/", 2, mode="exact")
    padded.update_pixels(amap, mask, box)
    cropped.update_pixels(amap[:, :, 8:], mask[:, :, 8:], None)
    a, b = padded.pixel.compute(), cropped.pixel.compute()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    naive = CLIPMDCMetrics("t/", 2, mode="exact")
    naive.update_pixels(amap, mask, None)  # with the padding scored, the pixel AP drops
    assert float(naive.pixel.compute()["t/pixel_ap"]) < float(a["t/pixel_ap"])


def test_to_original_crops_the_padding_then_resizes() -> None:
    maps = torch.zeros(1, 96, 96)
    maps[:, 36:60, :] = 1.0  # the content only
    back = to_original(maps, (0, 36, 96, 60), (200, 800))
    assert back.shape == (1, 200, 800) and float(back.min()) == 1.0


# ------------------------------------------------------------------------------------------------ group splits
def _parts(tmp_path: Path, column: bool) -> FolderReader:
    rows = []
    rng = np.random.default_rng(0)
    for part in range(12):
        for shot in range(4):  # 4 photographs of each part (KolektorSDD: 8)
            name = f"part{part:02d}_shot{shot}.png"
            write_image(tmp_path / name, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            rows.append({"image": name, "label": "scratch" if part % 3 == 0 else "good", "group": f"p{part}"})
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", *(["group"] if column else [])], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return FolderReader(tmp_path, labels_csv="labels.csv")


@pytest.mark.parametrize("how", ["column", "pattern"])
def test_group_splits_keep_every_part_in_one_split(tmp_path, how) -> None:
    reader = _parts(tmp_path, column=how == "column")
    kwargs = {"group_key": "group"} if how == "column" else {"group_pattern": r"(part\d+)_"}
    dm = DefectDataModule(reader, image_size=16, split="random", split_ratios=(0.5, 0.25, 0.25), seed=3, **kwargs)
    splits = dm.split_records()
    part = lambda r: Path(r.image_path).name.split("_")[0]  # noqa: E731
    seen = {name: {part(r) for r in recs} for name, recs in splits.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert sum(len(v) for v in splits.values()) == 48 and all(len(v) % 4 == 0 for v in splits.values())
    assert all(any(r.is_anomalous for r in recs) for recs in splits.values())  # stratified by group type
    # without grouping, the photographs of one part are spread over the splits
    plain = DefectDataModule(reader, image_size=16, split="random", split_ratios=(0.5, 0.25, 0.25), seed=3)
    seen = {name: {part(r) for r in recs} for name, recs in plain.split_records().items()}
    assert seen["train"] & seen["test"]


def test_group_errors_name_the_file(tmp_path) -> None:
    from common.data.errors import DataError

    records = _parts(tmp_path, column=False).records()
    with pytest.raises(DataError, match="part00_shot0.png: no 'group' entry"):
        record_groups(records, key="group")
    with pytest.raises(DataError, match="does not match its path"):
        record_groups(records, pattern=r"kos\d+")
    ungrouped = stratified_split(records, (0.5, 0.5), 0)
    assert ungrouped == stratified_split(records, (0.5, 0.5), 0, None)


# ------------------------------------------------------------------------------------------------ seeded order
def test_seeded_sampler_order_and_seeds_follow_seed_and_epoch_only() -> None:
    data = list(range(10))
    a, b = SeededSampler(data, seed=5), SeededSampler(data, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(i for i, _ in a) == data
    b.set_epoch(1)
    b.skip_once(4)
    assert list(b) == list(a)[4:]


def test_tile_training_items_oversample_defect_tiles(tmp_path) -> None:
    from common.data.sampling import TileSampler

    img = np.full((256, 1024, 3), 30, np.uint8)
    mask = np.zeros((256, 1024), np.uint8)
    mask[100:120, 900:910] = 255
    img[mask > 0] = 250
    path, mpath = write_image(tmp_path / "a.png", img), write_image(tmp_path / "a_mask.png", mask)
    rec = SampleRecord(path, "part", "scratch", True, mask_path=mpath)
    for fraction, low, high in ((1.0, 32, 32), (0.0, 0, 8)):
        ds = DefectDataset([rec], ["good", "scratch"], ["part"], build_transform(64, "none", resize="tile"),
                           resize="tile", image_size=64, tiles=TileSampler(fraction))
        items = [ds[(0, s)] for s in range(32)]
        defective = sum(it["label"] for it in items)
        assert low <= defective <= high
        assert all(it["image"].shape == (3, 64, 64) for it in items)
        assert all((it["label"] == 1) == bool(it["mask"].any()) for it in items)
        assert all(it["defect_type"] == ("scratch" if it["label"] else "good") for it in items)
    again = DefectDataset([rec], ["good", "scratch"], ["part"], build_transform(64, "light", resize="tile"),
                          resize="tile", image_size=64, tiles=TileSampler(0.5))
    assert torch.equal(again[(0, 7)]["image"], again[(0, 7)]["image"])  # per-sample seed: same tile, same flips
