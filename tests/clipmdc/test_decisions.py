"""Calibrated decisions of CLIP-MDC: thresholds chosen on the validation split, kept in every checkpoint, given
numbers win; onnx-predict decides and draws regions as lightning predict does (trained tiny model, smoothing on)."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipmdc.module import CLIPMDCModule
from clipmdc.presets import tiny
from common.calibration import MODES, select_threshold
from common.data.types import DefectBatch
from tests.clipmdc.helpers import make_batch
from tests.conftest import blob_pair, write_image

DATA_VOCAB = ["good", "scratch", "dent"]


def _normal(batch: DefectBatch) -> DefectBatch:
    zeros = torch.zeros_like(batch.label)
    return dataclasses.replace(batch, label=zeros, defect_type_id=zeros, mask=torch.zeros_like(batch.mask),
                               class_mask=torch.zeros_like(batch.class_mask), defect_type=["good"] * len(batch))


class Data(L.LightningDataModule):
    """In-memory batches; validation (and predict) on normal images only, or on normal + defective ones."""

    vocabulary = DATA_VOCAB
    object_names = ["bottle"]

    def __init__(self, val: str = "mixed") -> None:
        super().__init__()
        self.val = val

    def _batches(self, offset: int, normal: bool) -> DataLoader:
        batches = [make_batch(4, 32, seed=offset + i) for i in range(2)]
        return DataLoader([_normal(b) if normal else b for b in batches], batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._batches(0, False)

    def val_dataloader(self) -> DataLoader:
        return self._batches(10, self.val == "normal")

    test_dataloader = val_dataloader

    def predict_dataloader(self) -> DataLoader:
        return self._batches(10, self.val == "normal")


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    kw = {"max_epochs": 1, "logger": False, "enable_checkpointing": False, **kw}
    return L.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, **kw)


def _records(trainer: L.Trainer, module: CLIPMDCModule, data: L.LightningDataModule) -> list[dict]:
    return [p.record for batch in trainer.predict(module, datamodule=data) for p in batch]


def test_fixed_half_flags_every_normal_image_calibration_keeps_the_target_rate(tmp_path: Path) -> None:
    """The reported failure: a fixed 0.5 flags far too many images of a model whose probabilities run high."""
    model = tiny()
    with torch.no_grad():
        model.image_head.bias.fill_(20.0)  # over-confident image head: every probability near 1
    module, data = CLIPMDCModule(model), Data(val="normal")
    before = _records(_trainer(tmp_path), module, data)
    assert all(r["is_anomalous"] for r in before) and before[0]["threshold_mode"] == "none"
    assert before[0]["image_threshold"] == 0.5

    _trainer(tmp_path).validate(module, datamodule=data, verbose=False)  # val: 8 normal images, target 1%
    after = _records(_trainer(tmp_path), module, data)  # the same 8 images: floor(1% * 8) = 0 false alarms
    assert not any(r["is_anomalous"] for r in after)
    assert all(r["regions"] == [] and r["num_regions"] == 0 for r in after)  # called normal: no region
    assert {(r["threshold_mode"], r["target_far"]) for r in after} == {("far", 0.01)}
    assert after[0]["image_threshold"] > max(r["anomaly_score"] for r in after) - 1e-4


def test_f1_calibration_with_defects_and_given_thresholds_win(tmp_path: Path) -> None:
    module, data = CLIPMDCModule(tiny()), Data(val="mixed")
    _trainer(tmp_path).validate(module, datamodule=data, verbose=False)
    module.eval()
    with torch.no_grad():
        val = [(module.model(b.image).image_prob, b.label) for b in data.val_dataloader()]
    scores, labels = torch.cat([v[0] for v in val]), torch.cat([v[1] for v in val])
    expected = select_threshold(scores, labels)
    t = module.decision_thresholds()
    assert t["threshold_mode"] == "f1" and t["image_threshold"] == expected.value and t["target_far"] is None
    assert t["pixel_threshold_mode"] == "f1"  # val masks hold defect pixels

    module.image_threshold, module.pixel_threshold = 0.9, 0.2  # given (command line): wins over the calibration
    records = _records(_trainer(tmp_path), module, data)
    assert {(r["image_threshold"], r["pixel_threshold"], r["threshold_mode"]) for r in records} == {(0.9, 0.2, "given")}
    assert [r["is_anomalous"] for r in records] == (scores >= 0.9).tolist()
    for r in records:  # decisions and regions agree
        assert (r["num_regions"] >= 1) == r["is_anomalous"] == (r["defect_type"] != "good")

    results = _trainer(tmp_path).test(module, datamodule=data, verbose=False)[0]
    flagged = scores >= 0.9
    assert results["test/image_threshold"] == pytest.approx(0.9)
    assert results["test/image_far"] == pytest.approx(float(flagged[labels == 0].float().mean()))
    assert results["test/image_miss_rate"] == pytest.approx(float((~flagged[labels == 1]).float().mean()))


def test_every_checkpoint_carries_the_thresholds_of_its_epoch(tmp_path: Path) -> None:
    seen: dict[int, tuple[float, float]] = {}

    class Record(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: CLIPMDCModule) -> None:
            seen[trainer.current_epoch] = (float(pl_module.thresholds.image), float(pl_module.thresholds.pixel))

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    module = CLIPMDCModule(tiny(), optimizer=partial(torch.optim.AdamW, lr=1e-2))
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt, Record()],
                       num_sanity_val_steps=1)
    trainer.fit(module, datamodule=Data(val="mixed"))
    assert sorted(seen) == [0, 1]
    for epoch, (image, pixel) in seen.items():
        path = tmp_path / "ckpt" / f"epoch={epoch}.ckpt"
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert float(state["thresholds.image"]) == image and float(state["thresholds.pixel"]) == pixel
        assert MODES[int(state["thresholds.image_mode"])] == "f1"
        restored = CLIPMDCModule.load_from_checkpoint(path, model=tiny())  # e.g. the best checkpoint, later
        assert restored.decision_thresholds()["image_threshold"] == image
        assert restored.decision_thresholds()["threshold_mode"] == "f1"


def test_fit_without_validation_says_the_thresholds_are_not_calibrated(tmp_path: Path) -> None:
    module = CLIPMDCModule(tiny())
    with pytest.warns(UserWarning, match="not calibrated"):
        _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=Data())
    assert module.decision_thresholds()["threshold_mode"] == "none"


# ---------------------------------------------------------------------------------------------- ONNX == torch
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[CLIPMDCModule, object, Path]:
    """Tiny CLIP-MDC with smoothing (sigma 4) trained 4 epochs on generated non-square images of several sizes."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")
    from common.data import DefectDataModule, MVTecReader

    root = tmp_path_factory.mktemp("own") / "data"
    rng = np.random.default_rng(0)
    sizes = [(90, 120), (140, 100), (96, 96)]  # (H, W): resized to 96x96 by both paths
    for i in range(12):
        write_image(root / "plate" / "train" / "good" / f"{i:03d}.png", _sized(blob_pair(rng, 96, False)[0], sizes[i % 3]))
    for d in ("good", "scratch"):
        for i in range(6):
            img, m = blob_pair(rng, 96, d != "good")
            write_image(root / "plate" / "test" / d / f"{i:03d}.png", _sized(img, sizes[i % 3]))
            if d != "good":
                write_image(root / "plate" / "ground_truth" / d / f"{i:03d}_mask.png", _sized(m * 255, sizes[i % 3]))
    dm = DefectDataModule(MVTecReader(root), image_size=96, batch_size=6, num_workers=0, split="random",
                          split_ratios=(0.5, 0.25, 0.25), augment="none", seed=0, predict_reader=MVTecReader(root))
    torch.manual_seed(0)
    module = CLIPMDCModule(tiny(smooth_sigma=4.0), optimizer=partial(torch.optim.AdamW, lr=3e-3))
    _trainer(tmp_path_factory.mktemp("fit"), max_epochs=4, num_sanity_val_steps=0).fit(module, datamodule=dm)
    return module, dm, tmp_path_factory.mktemp("out")


def _sized(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((hw[1], hw[0]), Image.NEAREST))


def _predict_both(module: CLIPMDCModule, dm: object, out: Path, name: str, **given: float) -> list[tuple[dict, dict]]:
    """``lightning predict`` (Trainer + PredictionWriter) and ``onnx-predict`` of the same files; record pairs."""
    from clipmdc.export import OnnxPredictor, export_module, onnx_predict
    from common.prediction import PredictionWriter

    module.image_threshold, module.pixel_threshold = given.get("image"), given.get("pixel")
    trainer = _trainer(out, callbacks=[PredictionWriter(str(out / f"{name}_torch"))])
    trainer.predict(module, datamodule=dm, return_predictions=False)
    torch_lines = [json.loads(x) for x in (out / f"{name}_torch" / "predictions.jsonl").read_text().splitlines()]
    module.image_threshold = module.pixel_threshold = None
    path = export_module(module, out / f"{name}.onnx", 96)  # the calibrated thresholds go into the metadata
    onnx_predict(path, [r["path"] for r in torch_lines], out / f"{name}_onnx", batch_size=4,
                 image_threshold=given.get("image"), pixel_threshold=given.get("pixel"))
    lines = (out / f"{name}_onnx" / "predictions.jsonl").read_text().splitlines()
    onnx_lines = {r["path"]: r for r in map(json.loads, lines)}
    assert len(onnx_lines) == len(torch_lines) == 24
    if not given:
        assert OnnxPredictor(path).thresholds == module.decision_thresholds()
    return [(t, onnx_lines[t["path"]]) for t in torch_lines]


def _assert_same(pairs: list[tuple[dict, dict]], out: Path, name: str, exact: bool = True) -> None:
    """Same decisions, thresholds and regions (``exact``: to the pixel; else up to a border pixel, and to the
    pixel on 90% of the images: float32 PyTorch and onnxruntime differ by ~1e-6)."""
    from clipmdc.explain import regions_agree

    identical = 0
    for t, o in pairs:
        for key in ("is_anomalous", "defect_type", "num_regions", "image_threshold", "pixel_threshold",
                    "threshold_mode", "pixel_threshold_mode", "regions_below_pixel_threshold", "map_size"):
            assert o[key] == t[key], (t["path"], key)
        same = [(r["box"], r["area"]) for r in o["regions"]] == [(r["box"], r["area"]) for r in t["regions"]]
        assert same or (not exact and regions_agree(o["regions"], t["regions"], pixels=1)), t["path"]
        identical += same
        assert abs(o["anomaly_score"] - t["anomaly_score"]) <= 1e-4
        overlay = Image.open(out / f"{name}_onnx" / o["overlay"])
        assert overlay.size == Image.open(t["path"]).size  # at the image's own size and aspect ratio
    assert identical >= 0.9 * len(pairs)


def test_onnx_predict_equals_lightning_predict(trained) -> None:
    module, dm, out = trained
    assert module.model.smooth_sigma == 4.0 and module.decision_thresholds()["threshold_mode"] == "f1"
    calibrated = _predict_both(module, dm, out, "calibrated")
    _assert_same(calibrated, out, "calibrated")
    assert {t["is_anomalous"] for t, _ in calibrated} == {True, False}
    # Many regions drawn at a low pixel level (every image called anomalous): region borders agree pixel for pixel.
    maps = [np.asarray(Image.open(out / "calibrated_torch" / t["map"])) / 65535.0 for t, _ in calibrated]
    level = float(np.median([np.quantile(m, 0.97) for m in maps]))  # the top 3% of a typical map
    low = _predict_both(module, dm, out, "low", image=0.0, pixel=level)
    _assert_same(low, out, "low", exact=False)
    assert sum(t["num_regions"] for t, _ in low) > len(low) and not all(t["regions_below_pixel_threshold"] for t, _ in low)


def test_onnx_predict_given_thresholds_win(trained) -> None:
    from clipmdc.export import export_module, onnx_predict

    module, dm, out = trained
    path = export_module(module, out / "given.onnx", 96)
    files = [str(r.image_path) for r in dm.split_records()["test"]]
    module.image_threshold = module.pixel_threshold = None
    onnx_predict(path, files, out / "given", image_threshold=0.0, pixel_threshold=1.0)
    lines = [json.loads(x) for x in (out / "given" / "predictions.jsonl").read_text().splitlines()]
    assert all(x["is_anomalous"] and x["threshold_mode"] == "given" and x["image_threshold"] == 0.0 for x in lines)
    assert all(x["num_regions"] >= 1 and x["regions_below_pixel_threshold"] for x in lines)  # most anomalous one
