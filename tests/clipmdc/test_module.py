"""CLIPMDCModule with a Lightning Trainer on in-memory batches: regimes, checkpoints, open vocabulary."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from clipmdc.module import CLIPMDCModule
from clipmdc.presets import tiny
from common.prediction import ImagePrediction
from common.synthesis.generator import PerlinAnomalyGenerator
from tests.clipmdc.helpers import make_batch

DATA_VOCAB = ["good", "scratch", "dent"]


class BatchData(L.LightningDataModule):
    """Serves ready-made DefectBatch es; exposes the vocabulary like DefectDataModule."""

    vocabulary = DATA_VOCAB
    object_names = ["bottle"]

    def _loader(self) -> DataLoader:
        return DataLoader([make_batch(4, 32, seed=i) for i in range(2)], batch_size=None)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


def _trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


@pytest.mark.parametrize("regime", ["supervised", "weakly_supervised", "normal_only"])
def test_fit_each_regime_logs_every_term(tmp_path, regime: str) -> None:
    synthesis = None if regime == "supervised" else PerlinAnomalyGenerator(seed=0)
    module = CLIPMDCModule(
        tiny(), regime=regime, synthesis=synthesis, optimizer=partial(torch.optim.AdamW, lr=1e-3)
    )
    frozen_before = {n: p.clone() for n, p in module.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=BatchData())
    logged = trainer.callback_metrics
    for term in ("focal", "dice", "type_ce", "image_type_ce", "image_bce", "topk_bce", "total"):
        assert f"train/{term}" in logged and f"val/{term}" in logged
    for key in ("val/image_auroc", "val/pixel_auroc", "val/pixel_aupro", "val/type_accuracy"):
        assert key in logged and torch.isfinite(logged[key])
    assert module.model.defect_types == DATA_VOCAB  # taken from the DataModule in setup()
    params = dict(module.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen_before.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable_before.items())
    opt = trainer.optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in module.parameters() if p.requires_grad}


def test_checkpoint_without_frozen_weights_loads_strictly(tmp_path) -> None:
    module = CLIPMDCModule(tiny())
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=BatchData())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert not any(".image_encoder." in k or ".text_encoder." in k for k in ckpt["state_dict"])
    assert ckpt["defectfm"]["vocabulary"]["defect_types"] == DATA_VOCAB
    restored = CLIPMDCModule.load_from_checkpoint(path, model=tiny(), strict=True)
    assert restored.model.defect_types == DATA_VOCAB  # the checkpoint's names, with no data at hand
    for k, v in module.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k


def test_open_vocabulary_at_test_time(tmp_path) -> None:
    trained = CLIPMDCModule(tiny())
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(trained, datamodule=BatchData())
    weights = {k: v.clone() for k, v in trained.state_dict().items()}

    new_vocab = ["good", "crack", "dent", "hole", "stain"]  # "scratch" dropped, three names added
    module = CLIPMDCModule(tiny(), defect_types=new_vocab)
    module.load_state_dict(weights, strict=True)
    results = _trainer(tmp_path).test(module, datamodule=BatchData(), verbose=False)
    assert "test/type_accuracy" in results[0] and "test/image_auroc" in results[0]
    # data ids (scratch=1, dent=2) mapped by name into the new vocabulary (scratch -> -1, dent -> 2)
    assert module._type_mapping.tolist() == [0, -1, 2]
    preds = _trainer(tmp_path).predict(module, datamodule=BatchData())
    assert len(preds[0]) == 4 and isinstance(preds[0][0], ImagePrediction)
    assert list(preds[0][0].record["type_probabilities"]) == new_vocab  # the outputs follow the new names
    assert preds[0][0].record["defect_type"] in new_vocab
    assert preds[0][0].anomaly_map.shape == (32, 32)
    assert [p.path for p in preds[0]] == [f"img_{i}.png" for i in range(4)]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in weights.items())


def test_synthetic_defect_type_must_be_in_vocabulary() -> None:
    with pytest.raises(ValueError):
        CLIPMDCModule(tiny(), defect_types=["good", "dent"], synthetic_defect_type="perlin")
    module = CLIPMDCModule(tiny(), defect_types=["good", "anomaly"], synthetic_defect_type="anomaly")
    assert module._synthetic_type_id == 1
