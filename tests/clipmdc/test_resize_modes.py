"""CLIP-MDC in every resize mode (issue 13): fit (memory per tile), test and predict run; predictions are in the
files' pixels; ``onnx-predict`` of the exported graph (letterbox and tiling outside it) gives what
``lightning predict`` gives; ``defectfm predict`` takes the checkpoint's mode unless told; one loaded image
predicts as its file does."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from clipmdc.memory import NormalMemory
from clipmdc.module import CLIPMDCModule
from clipmdc.presets import tiny
from common.data import DefectDataModule, MVTecReader
from common.data.tiling import RESIZE_MODES
from common.prediction import PredictionWriter
from tests.conftest import blob_pair, write_image

SIZES = [(60, 150), (140, 90), (64, 64)]  # (H, W): wider, taller and one tile


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("modes") / "data"
    rng = np.random.default_rng(0)
    for i in range(6):
        img = rng.integers(60, 110, (*SIZES[i % 3], 3), dtype=np.uint8)
        write_image(root / "plate" / "train" / "good" / f"{i:03d}.png", img)
    for d in ("good", "scratch"):
        for i in range(3):
            img, m = blob_pair(rng, 64, d != "good")
            h, w = SIZES[i % 3]
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.NEAREST))
            write_image(root / "plate" / "test" / d / f"{i:03d}.png", img)
            if d != "good":
                mask = np.asarray(Image.fromarray(m * 255).resize((w, h), Image.NEAREST))
                write_image(root / "plate" / "ground_truth" / d / f"{i:03d}_mask.png", mask)
    return root


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, **kw)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_every_mode_fits_tests_predicts_and_onnx_predict_agrees(root, tmp_path, mode) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")
    from clipmdc.explain import regions_agree
    from clipmdc.export import OnnxPredictor, export_module, onnx_predict

    dm = DefectDataModule(MVTecReader(root), image_size=64, batch_size=4, eval_batch_size=3, num_workers=0,
                          augment="light", resize=mode, predict_reader=MVTecReader(root), val_from="test")
    torch.manual_seed(0)
    module = CLIPMDCModule(tiny(memory=NormalMemory(coreset_ratio=1.0)), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    _trainer(tmp_path, max_steps=3, num_sanity_val_steps=0).fit(module, datamodule=dm)
    assert module.model.memory.ready and set(module.model.memory.owner.tolist()) <= set(range(12))
    (results,) = _trainer(tmp_path).test(module, datamodule=dm, verbose=False)
    assert all(math.isfinite(results[f"test/{k}"]) for k in ("image_auroc", "pixel_auroc", "pixel_aupro"))

    module.image_threshold, module.pixel_threshold = 0.0, 0.6  # every image anomalous: regions everywhere
    out = tmp_path / "torch"
    _trainer(tmp_path, callbacks=[PredictionWriter(str(out))]).predict(module, datamodule=dm, return_predictions=False)
    torch_lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(torch_lines) == 12
    for rec in torch_lines:  # maps, regions and boxes in the file's pixels
        w, h = Image.open(rec["path"]).size
        assert rec["map_size"] == [h, w]
        assert Image.open(out / rec["map"]).size == (w, h)
        assert all(0 <= r["box"][0] < r["box"][2] <= w and 0 <= r["box"][1] < r["box"][3] <= h for r in rec["regions"])

    module.image_threshold = module.pixel_threshold = None
    path = export_module(module, tmp_path / "m.onnx", 64, resize=dm.settings)
    assert OnnxPredictor(path).resize == {"resize": mode, "tile_overlap": 0.25, "tile_scale": 1.0}
    onnx_predict(path, [r["path"] for r in torch_lines], tmp_path / "onnx", batch_size=3, image_threshold=0.0,
                 pixel_threshold=0.6)
    onnx_lines = {r["path"]: r for r in map(json.loads, (tmp_path / "onnx" / "predictions.jsonl").read_text().splitlines())}
    agree = 0
    for t in torch_lines:
        o = onnx_lines[t["path"]]
        assert o["map_size"] == t["map_size"] and o["is_anomalous"] == t["is_anomalous"]
        assert abs(o["anomaly_score"] - t["anomaly_score"]) <= 1e-4, (mode, t["path"])
        assert o["defect_type"] == t["defect_type"]
        maps = [np.asarray(Image.open(d / r["map"]), np.float64) / 65535 for d, r in ((out, t), (tmp_path / "onnx", o))]
        assert np.abs(maps[0] - maps[1]).max() <= 1e-3, (mode, t["path"])  # the same map, in the file's pixels
        # regions: the untrained map is nearly flat, so a 1e-6 float difference can move a border a few pixels
        agree += regions_agree(o["regions"], t["regions"], pixels=1)
    assert agree >= 0.75 * len(torch_lines), mode


def test_predict_uses_the_checkpoint_mode_unless_told(tmp_path) -> None:
    from common.predict import cli_args

    write_image(tmp_path / "in" / "a.png", np.zeros((30, 50, 3), np.uint8))
    ckpt = {"state_dict": {}, "defectfm": {"model": {"class_path": "clipmdc.module.CLIPMDCModule", "init_args": {}},
                                          "data": {"image_size": 64, "resize": "tile", "tile_overlap": 0.5,
                                                   "tile_scale": 0.5}}}
    torch.save(ckpt, tmp_path / "m.ckpt")

    def data(*extra: str) -> dict:
        args, _ = cli_args(["--ckpt_path", str(tmp_path / "m.ckpt"), "--input", str(tmp_path / "in"), "--out",
                            str(tmp_path / "out"), *extra])
        return json.loads(args[args.index("--data") + 1])["init_args"]

    assert {k: data()[k] for k in ("resize", "tile_overlap", "tile_scale")} == {
        "resize": "tile", "tile_overlap": 0.5, "tile_scale": 0.5}
    told = data("--resize", "letterbox", "--tile_scale", "1.0")
    assert told["resize"] == "letterbox" and told["tile_scale"] == 1.0 and told["tile_overlap"] == 0.5


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_one_loaded_image_predicts_as_its_file(root, tmp_path, mode) -> None:
    from common.predict import predict_image

    module = CLIPMDCModule(tiny(), image_threshold=0.0, pixel_threshold=0.6).eval()
    dm = DefectDataModule(MVTecReader(root), image_size=64, eval_batch_size=2, num_workers=0, resize=mode,
                          predict_reader=MVTecReader(root))
    preds = _trainer(tmp_path).predict(module, datamodule=dm)
    first = preds[0][0]
    image = np.asarray(Image.open(first.path).convert("RGB"))
    one = predict_image(module, image, dm.settings, path=first.path, object_name="plate")
    assert one.record["map_size"] == first.record["map_size"] == list(image.shape[:2])
    assert [(r["box"], r["area"]) for r in one.record["regions"]] == [(r["box"], r["area"]) for r in first.record["regions"]]
    assert np.allclose(one.anomaly_map, first.anomaly_map, atol=1e-5)  # batch of 1 vs 2: float noise only
