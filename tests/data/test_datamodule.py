"""DataModule: deterministic splits, exact few-shot counts, aligned transforms, vocabulary, regimes."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import NORMAL, ClassIdSegReader, DefectBatch, DefectDataModule, MVTecReader, Reader
from common.data.splits import few_shot, stratified_split
from common.data.transforms import build_transform


def _paths(records) -> list[str]:
    return [str(r.image_path) for r in records]


def test_split_is_deterministic_and_order_independent(mvtec_root: Path) -> None:
    recs = MVTecReader(mvtec_root).records()
    a = stratified_split(recs, (0.6, 0.2, 0.2), seed=3)
    shuffled = list(recs)
    random.Random(1).shuffle(shuffled)
    b = stratified_split(shuffled, (0.6, 0.2, 0.2), seed=3)
    assert [_paths(p) for p in a] == [_paths(p) for p in b]
    c = stratified_split(recs, (0.6, 0.2, 0.2), seed=4)
    assert [_paths(p) for p in a] != [_paths(p) for p in c]
    # a partition: nothing lost, nothing duplicated, every stratum in every part
    flat = sum((_paths(p) for p in a), [])
    assert sorted(flat) == sorted(_paths(recs)) and len(set(flat)) == len(flat)
    for part in a:
        assert {(r.object_name, r.defect_type) for r in part} == {(r.object_name, r.defect_type) for r in recs}


def test_datamodule_auto_split_carves_val_from_train(mvtec_root: Path) -> None:
    dm = DefectDataModule(MVTecReader(mvtec_root), num_workers=0, val_fraction=0.25, seed=0)
    s = dm.split_records()
    assert len(s["train"]) + len(s["val"]) == 8 and len(s["val"]) == 2
    assert all(r.split == "test" for r in s["test"]) and len(s["test"]) == 16
    again = DefectDataModule(MVTecReader(mvtec_root), num_workers=0, val_fraction=0.25, seed=0).split_records()
    assert {k: _paths(v) for k, v in s.items()} == {k: _paths(v) for k, v in again.items()}


@pytest.mark.parametrize("shots", [1, 2])
def test_few_shot_counts_are_exact(mvtec_root: Path, shots: int) -> None:
    dm = DefectDataModule(MVTecReader(mvtec_root), split="random", split_ratios=(0.6, 0.2, 0.2),
                          few_shot=shots, num_workers=0)
    train = dm.split_records()["train"]
    assert Counter(r.defect_type for r in train) == {NORMAL: shots, "hole": shots, "scratch": shots}
    per_obj = few_shot(MVTecReader(mvtec_root).records(), shots, per="object_defect")
    assert set(Counter((r.object_name, r.defect_type) for r in per_obj).values()) == {shots}


def test_transforms_keep_masks_aligned(rng: np.random.Generator) -> None:
    # the mask is derived from the image pixels; after any joint transform it must still match them
    img = np.full((48, 64, 3), 30, np.uint8)
    for _ in range(5):
        y, x = rng.integers(0, 40), rng.integers(0, 56)
        img[y : y + 8, x : x + 8] = 255
    mask = (img[..., 0] > 128).astype(np.uint8)
    t = build_transform((32, 32), augment="strong")
    checked = 0
    for seed in range(30):
        random.seed(seed)
        np.random.seed(seed)
        t.set_random_seed(seed)
        out = t(image=img, mask=mask, class_mask=mask * 2)
        derived = out["image"][..., 0] > 128
        agree = (derived == (out["mask"] > 0)).mean()
        assert agree > 0.93, f"seed {seed}: mask and image disagree on {1 - agree:.1%} of pixels"
        assert np.array_equal(out["class_mask"] > 0, out["mask"] > 0)
        assert set(np.unique(out["mask"])) <= {0, 1}
        checked += 1
    assert checked == 30


def test_batches_are_typed_and_aligned(mvtec_root: Path) -> None:
    dm = DefectDataModule(MVTecReader(mvtec_root), image_size=24, batch_size=5, split="random",
                          augment="strong", num_workers=0)
    dm.setup("fit")
    seen = 0
    for batch in dm.train_dataloader():
        assert isinstance(batch, DefectBatch)
        assert batch.image.shape[1:] == (3, 24, 24) and batch.image.dtype == torch.float32
        assert 0.0 <= batch.image.min() and batch.image.max() <= 1.0
        assert batch.mask.shape[1:] == (1, 24, 24) and batch.class_mask.shape[1:] == (24, 24)
        assert torch.equal(batch.label.bool(), batch.defect_type_id > 0)
        for i in range(len(batch)):
            has_defect = bool(batch.mask[i].any())
            assert has_defect == bool(batch.label[i])
            assert torch.equal(batch.class_mask[i] > 0, batch.mask[i, 0] > 0)
            assert set(batch.class_mask[i].unique().tolist()) <= {0, int(batch.defect_type_id[i])}
        seen += len(batch)
    assert seen == len(dm.split_records()["train"])


def test_reference_loader_is_the_unaugmented_normal_training_set_in_order(mvtec_root: Path) -> None:
    dm = DefectDataModule(MVTecReader(mvtec_root), image_size=24, batch_size=5, split="random",
                          augment="strong", num_workers=0)
    dm.setup("fit")
    first, second = list(dm.reference_dataloader()), list(dm.reference_dataloader())
    normal = [r for r in dm.split_records()["train"] if not r.is_anomalous]
    assert 0 < len(normal) < len(dm.split_records()["train"])
    assert [p for b in first for p in b.path] == _paths(normal)  # every normal one, in split order
    assert all(torch.equal(a.image, b.image) for a, b in zip(first, second, strict=True))  # no random augmentation
    plain = dm._dataset(normal, train=False)
    assert torch.equal(first[0].image[0], plain[0]["image"])
    # capped (quick debug runs): evenly spread over the list, not the first ones
    capped = [p for b in dm.reference_dataloader(max_images=3) for p in b.path]
    assert capped == [_paths(normal)[i * len(normal) // 3] for i in range(3)]


def test_vocabulary_and_open_vocabulary_override(mvtec_root: Path, classid_root: Path) -> None:
    dm = DefectDataModule(MVTecReader(mvtec_root), num_workers=0)
    assert dm.vocabulary == [NORMAL, "hole", "scratch"] and dm.num_classes == 3
    assert dm.object_names == ["bottle", "screw"]
    dm2 = DefectDataModule(MVTecReader(mvtec_root), vocabulary=["scratch", "crack", "hole"], num_workers=0)
    assert dm2.vocabulary == [NORMAL, "scratch", "crack", "hole"]
    item = dm2.dataset("test")[-1]
    assert dm2.vocabulary[item["defect_type_id"]] == item["defect_type"]
    seg = DefectDataModule(ClassIdSegReader(classid_root), num_workers=0)
    assert seg.vocabulary == [NORMAL, "inclusion", "patches", "scratches"]


def test_regime_switches(mvtec_root: Path) -> None:
    normal = DefectDataModule(MVTecReader(mvtec_root), split="random", train_filter="normal", num_workers=0)
    assert {r.defect_type for r in normal.split_records()["train"]} == {NORMAL}
    weak = DefectDataModule(MVTecReader(mvtec_root), split="random", weak_labels=True, image_size=16, num_workers=0)
    batch = next(iter(weak.train_dataloader()))
    assert not batch.has_mask.any() and batch.mask.sum() == 0 and batch.label.sum() > 0
    assert next(iter(weak.test_dataloader())).has_mask.all()


def test_link_arguments_can_read_the_vocabulary(mvtec_root: Path) -> None:
    from jsonargparse import ArgumentParser

    from common.testing import TinySegModule

    parser = ArgumentParser()
    parser.add_class_arguments(DefectDataModule, "data")
    parser.add_class_arguments(TinySegModule, "model")
    parser.link_arguments("data", "model.defect_types", compute_fn=lambda dm: dm.vocabulary, apply_on="instantiate")
    cfg = parser.parse_object({"data": {"reader": {"class_path": "common.data.MVTecReader",
                                                     "init_args": {"root": str(mvtec_root)}}, "num_workers": 0}})
    init = parser.instantiate_classes(cfg)
    assert init.model.defect_types == [NORMAL, "hole", "scratch"]
    assert isinstance(init.data.reader, Reader)
