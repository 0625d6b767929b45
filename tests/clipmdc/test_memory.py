"""Normal-reference memory: coreset, distances, leave-one-image-out, checkpoints, wiring into CLIP-MDC."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from clipmdc.memory import NormalMemory, greedy_coreset
from clipmdc.module import CLIPMDCModule
from clipmdc.presets import tiny
from common.data import DataError
from tests.clipmdc.helpers import make_batch
from tests.clipmdc.test_module import BatchData, _trainer


def _tokens(g: torch.Generator, batch: int = 3, channels: int = 4, size: int = 5) -> list[torch.Tensor]:
    return [torch.randn(batch, channels, size, size, generator=g)]


def test_greedy_coreset_covers_every_cluster() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centers])  # 4 tight clusters
    keep = greedy_coreset(points, 4, projection_dim=None)
    assert sorted((keep // 50).tolist()) == [0, 1, 2, 3]  # one point from each cluster
    assert len(set(keep.tolist())) == 4
    assert torch.equal(greedy_coreset(points, 500), torch.arange(200))  # size >= N keeps everything


def test_distances_match_brute_force_and_leave_one_out() -> None:
    g = torch.Generator().manual_seed(0)
    memory = NormalMemory(levels=(0,), coreset_ratio=1.0, pool=1)
    train = _tokens(g)
    ids = torch.tensor([0, 1, 2])  # sample ids of three images
    info = memory.build([(train, ids)])
    assert info == {**info, "images": 3, "patches": 75, "bank": 75}
    feats = train[0].flatten(2).transpose(1, 2)  # (3, 25, 4)
    bank = feats.reshape(-1, 4)

    # Test time: a bank image is at distance 0 from itself; a new one matches torch.cdist.
    assert memory(train).abs().max() < 1e-2  # sqrt of the expanded form's rounding
    query = _tokens(g, batch=2)
    brute = torch.cdist(query[0].flatten(2).transpose(1, 2), bank).min(-1).values  # (2, 25)
    torch.testing.assert_close(memory(query).flatten(1) * memory.scale, brute, atol=1e-4, rtol=1e-4)

    # Training: each image's own entries are ignored, so the distance is to the other two images only.
    loo = memory(train, exclude=ids).flatten(1) * memory.scale  # (3, 25)
    for i in range(3):
        others = torch.cat([feats[j] for j in range(3) if j != i])
        torch.testing.assert_close(loo[i], torch.cdist(feats[i], others).min(-1).values, atol=1e-4, rtol=1e-4)
    # The scale is the mean leave-one-out distance: normal patches score about 1.
    assert abs(float(loo.mean() / memory.scale) - 1.0) < 1e-4


def test_an_image_owning_the_whole_bank_gets_finite_distances() -> None:
    memory = NormalMemory(levels=(0,), coreset_ratio=0.01)  # 75 patches -> a bank of 1 entry
    tokens, ids = _tokens(torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2])
    memory.build([(tokens, ids)])
    assert memory.bank.shape[0] == 1 and torch.isfinite(memory.scale)
    assert torch.isfinite(memory(tokens, exclude=ids)).all()


def test_features_pool_and_align_levels() -> None:
    memory = NormalMemory(levels=(0, 1), pool=3)
    tokens = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    assert memory.features(tokens).shape == (2, 10, 8, 8)
    assert not memory.ready and memory(tokens).abs().sum() == 0  # empty bank: no evidence yet


def test_empty_and_mismatched_inputs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="normal training images"):
        NormalMemory().build([])
    with pytest.raises(ValueError, match="coreset_ratio"):
        NormalMemory(coreset_ratio=0.0)
    memory = NormalMemory(levels=(0,), coreset_ratio=1.0)
    memory.build([(_tokens(torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2]))])
    with pytest.raises(ValueError, match="4-d entries"):
        memory([torch.randn(1, 7, 5, 5)])


def test_state_dict_round_trip_resizes_the_bank() -> None:
    built = NormalMemory(levels=(0,), coreset_ratio=0.5)
    built.build([(_tokens(torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2]))])
    fresh = NormalMemory(levels=(0,))
    fresh.load_state_dict(built.state_dict(), strict=True)
    assert fresh.ready and all(torch.equal(fresh.state_dict()[k], v) for k, v in built.state_dict().items())


def test_fit_builds_the_bank_from_normal_images_and_checkpoints_it(tmp_path) -> None:
    module = CLIPMDCModule(
        tiny(memory=NormalMemory(coreset_ratio=1.0)), optimizer=partial(torch.optim.AdamW, lr=1e-3)
    )
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=BatchData())
    memory = module.model.memory
    # BatchData: 2 batches x 2 normal images (labels alternate), 32 px -> 2x2 ViT patches each.
    normal_ids = [0, 2]  # the sample ids of img_0.png and img_2.png (make_batch numbers its images)
    assert memory.ready and memory.bank.shape[0] == 2 * 2 * 4
    assert set(memory.owner.tolist()) == set(normal_ids)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    restored = CLIPMDCModule.load_from_checkpoint(path, model=tiny(memory=NormalMemory()), strict=True)
    assert torch.equal(restored.model.memory.bank, memory.bank)
    # A loaded bank is kept when training goes on (no rebuild from the new data).
    bank = restored.model.memory.bank.clone()
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(restored, datamodule=BatchData())
    assert torch.equal(restored.model.memory.bank, bank)


def test_memory_evidence_reaches_the_anomaly_map() -> None:
    model = tiny(memory=NormalMemory(coreset_ratio=1.0)).eval()
    batch = make_batch(4, 32)
    unseen = make_batch(4, 32, seed=1).image
    with torch.no_grad():
        before = model(unseen).anomaly_map
        tokens = model.image_encoder(batch.image).tokens
        model.memory.build([(tokens, batch.sample_id)])
        assert not torch.allclose(before, model(unseen).anomaly_map)  # the distance enters the anomaly logit
        after = model(batch.image).anomaly_map
        loo = model(batch.image, image_ids=batch.sample_id).anomaly_map
    assert (loo > after).all()  # own patches excluded: larger distances, larger anomaly logits


def test_bank_comes_from_the_reference_loader_when_the_datamodule_has_one(tmp_path) -> None:
    reference = make_batch(4, 32, seed=7)

    class WithReference(BatchData):
        def reference_dataloader(self) -> DataLoader:
            return DataLoader([reference], batch_size=None)

    module = CLIPMDCModule(tiny(memory=NormalMemory(coreset_ratio=1.0)))
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=WithReference())
    memory = module.model.memory
    with torch.no_grad():
        normal = reference.image[reference.label == 0]
        expected = memory.features(module.model.image_encoder(normal).tokens)  # (2, C, h, w)
    expected = expected.flatten(2).transpose(1, 2).reshape(-1, expected.shape[1])
    assert memory.bank.shape == expected.shape
    assert torch.cdist(expected, memory.bank).min(1).values.max() < 1e-4  # same patches, coreset order


def test_no_normal_training_image_is_a_clear_error(tmp_path) -> None:
    class DefectsOnly(BatchData):
        def _loader(self) -> DataLoader:
            batches = [make_batch(4, 32, seed=i) for i in range(2)]
            for b in batches:
                b.label[:] = 1
            return DataLoader(batches, batch_size=None)

        train_dataloader = val_dataloader = _loader

    module = CLIPMDCModule(tiny(memory=NormalMemory()))
    with pytest.raises(DataError, match=r"normal \(defect-free\) training images.*has none.*memory null"):
        _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=DefectsOnly())


def test_coreset_selection_shows_a_progress_bar(capsys) -> None:
    points = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    quiet = greedy_coreset(points, 50)
    assert "coreset" not in capsys.readouterr().err
    assert torch.equal(greedy_coreset(points, 50, progress=True), quiet)  # same selection
    assert "memory bank: coreset" in capsys.readouterr().err


def test_debug_runs_build_the_bank_from_few_normal_images(tmp_path, capsys) -> None:
    """fast_dev_run / limit_train_batches cap the images of the bank to what those batches hold (spread over the
    normal training images), so a debug run stays quick whatever the data size; a line says so."""
    from common.data import DefectDataModule, MVTecReader
    from common.data.demo import generate_demo_dataset

    root = generate_demo_dataset(tmp_path / "demo", image_size=32, objects=("plate",), n_train_good=30,
                                 n_test_good=2, n_test_defect=1)
    dm = DefectDataModule(MVTecReader(root), image_size=32, batch_size=4, num_workers=0)
    module = CLIPMDCModule(tiny(memory=NormalMemory(coreset_ratio=1.0)))
    L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(module, datamodule=dm)
    owners = set(module.model.memory.owner.tolist())
    normal = dm.split_records()["train"]
    assert len(normal) == 24 and len(owners) == 4  # one training batch of 4 images, not all 24
    spread = [normal[i * 24 // 4] for i in range(4)]
    assert owners == set(dm.sample_ids(spread))
    assert "built from at most 4 normal images, because training is limited" in capsys.readouterr().out
    # a full run uses every normal training image
    module = CLIPMDCModule(tiny(memory=NormalMemory(coreset_ratio=1.0)))
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=dm)
    assert len(set(module.model.memory.owner.tolist())) == 24
