"""Images as they come: ``stretch`` vs ``letterbox`` vs ``tile`` (issue 13), CLIP-MDC supervised, same training
time per arm.

``python -m benchmarks.resolution`` trains CLIP-MDC (``offline_real``, supervised: masks + types) once per resize
mode on each of Magnetic Tile (varied shapes and aspect ratios), CrackForest and PV EL crack segmentation (thin
cracks), each arm for the same wall-clock budget (Lightning ``max_time``), then tests it on the same seeded test
images: P-AUROC, AUPRO, AP_loc (pixel average precision) and I-AUROC where the test images include normal ones,
and evaluation images/s (tiling included). Metrics are computed at each mode's working resolution (stretch and
letterbox: the model input, letterbox without its padding; tile: the files' native pixels), with the files' masks
brought to it by nearest neighbour. Data (``../shared/data``) are subsampled (seeded, stratified) so that the run
stays under about 25 minutes of a 2-core CPU. ``--quick`` runs the same code on generated long images with thin
scratches and the tiny preset (a test runs it). Writes ``benchmarks/results/resolution.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import print_table, write_results

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MODES = ("stretch", "letterbox", "tile")
SETTINGS: dict[str, Any] = {
    "image_size": 128, "batch_size": 8, "train_seconds": 60, "lr": 2e-3, "weight_decay": 1e-4,
    "images": 120, "test_fraction": 0.2, "tile_overlap": 0.25, "tile_scale": 1.0, "defect_tile_fraction": 0.5,
    "augment": "light", "seed": 0, "preset": "offline_real", "threads": 2,
}
QUICK = {**SETTINGS, "image_size": 64, "train_seconds": 4, "images": 16, "test_fraction": 0.5, "preset": "tiny"}
KINDS = {
    "magnetic_tile": "varied shapes and aspect ratios (blowholes, breaks, cracks, fray, uneven), 103-632 px",
    "crackforest": "thin cracks on road photos, 480x320",
    "pv_el_crackseg": "thin cracks and dark areas on square EL cells, 400x400",
    "generated": "2048x512-like long images with thin scratches (--quick)",
}


def _log(msg: str) -> None:
    print(f"[resolution {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def readers(quick_root: Path | None) -> dict[str, Any]:
    """The readers of the benchmark's datasets (``configs/data/*.yaml`` settings), or of the generated data."""
    from common.data import ClassIdSegReader, FolderReader, MagneticTileReader, MVTecReader

    if quick_root is not None:
        return {"generated": MVTecReader(quick_root)}
    pv = DATA / "pv_el_crackseg" / "examples" / "crack_segmentation" / "img_label_for_training"
    return {
        "magnetic_tile": MagneticTileReader(DATA / "magnetic_tile", object_name="magnetic_tile"),
        "crackforest": FolderReader(DATA / "crackforest" / "image", mask_dir="../masks_png", object_name="pavement",
                                    default_defect_type="crack", mask_threshold=127, skip_unmasked=True),
        "pv_el_crackseg": ClassIdSegReader(pv, object_name="solar_cell", image_dir="{split}/img", mask_dir="{split}/ann",
                                           split_names={"testset": "test"},
                                           class_names={1: "dark area", 2: "cross crack", 3: "crack"}, ignore_ids=[4]),
    }


class Subset:
    """A seeded, stratified subset of a reader's records (the same for every arm)."""

    def __init__(self, reader: Any, n: int, seed: int) -> None:
        from common.data.splits import stratified_split

        records = [r for r in reader.records() if r.mask_path is not None or r.is_anomalous is False]
        self._records = stratified_split(records, (n, max(0, len(records) - n)), seed)[0] if len(records) > n else records
        self.root, self.layout, self.class_names = reader.root, getattr(reader, "layout", "subset"), ()

    def records(self) -> list[Any]:
        import dataclasses

        return [dataclasses.replace(r, split=None) for r in self._records]


def write_quick_data(root: Path, n: int = 16, seed: int = 0) -> Path:
    """Generated long images (128 x 512, H x W) with a thin bright scratch (defective) or none (normal), in the
    MVTec layout (the benchmark splits them again, seeded)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        defect = i % 2 == 1
        img = rng.integers(50, 90, (128, 512, 3), dtype=np.uint8)
        mask = np.zeros((128, 512), np.uint8)
        if defect:
            x, y = int(rng.integers(20, 480)), int(rng.integers(10, 60))
            mask[y : y + 50, x : x + 4] = 255
            img[mask > 0] = 230
        kind, split = ("scratch", "test") if defect else ("good", "train")
        (root / "part" / split / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "part" / split / kind / f"{i:03d}.png")
        if defect:
            (root / "part" / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "part" / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


def run_arm(reader: Any, mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Trains CLIP-MDC supervised in ``mode`` for ``train_seconds`` and tests it; the metrics and timings."""
    import lightning as L
    import torch

    from clipmdc import presets
    from clipmdc.module import CLIPMDCModule
    from common.data import DefectDataModule

    L.seed_everything(cfg["seed"], verbose=False)
    tf = cfg["test_fraction"]
    dm = DefectDataModule(reader, image_size=cfg["image_size"], batch_size=cfg["batch_size"], num_workers=0,
                          split="random", split_ratios=(1 - tf, 0.0, tf), seed=cfg["seed"], augment=cfg["augment"],
                          resize=mode, tile_overlap=cfg["tile_overlap"], tile_scale=cfg["tile_scale"],
                          defect_tile_fraction=cfg["defect_tile_fraction"])
    module = CLIPMDCModule(getattr(presets, cfg["preset"])(), regime="supervised", data_vocabulary=dm.vocabulary,
                           data_object_names=dm.object_names,
                           optimizer=functools.partial(torch.optim.AdamW, lr=cfg["lr"], weight_decay=cfg["weight_decay"]))
    trainer = L.Trainer(accelerator="cpu", max_time=datetime.timedelta(seconds=cfg["train_seconds"]), max_epochs=10_000,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t0
    n_test = len(dm.split_records()["test"])
    t0 = time.perf_counter()
    (metrics,) = trainer.test(module, datamodule=dm, verbose=False)
    test_s = time.perf_counter() - t0
    get = lambda k: float(metrics.get(f"test/{k}", math.nan))  # noqa: E731
    return {"p_auroc": get("pixel_auroc"), "aupro": get("pixel_aupro"), "ap_loc": get("pixel_ap"),
            "i_auroc": get("image_auroc"), "images_per_s": n_test / test_s, "train_s": round(train_s, 1),
            "train_steps": int(trainer.global_step), "train_samples": int(trainer.global_step) * cfg["batch_size"],
            "test_images": n_test}


def recommend(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per dataset, the mode with the best AP_loc (ties: AUPRO), and by how much it beats stretch."""
    out = {}
    for name, arms in results.items():
        best = max(arms, key=lambda m: (_num(arms[m]["ap_loc"]), _num(arms[m]["aupro"])))
        out[name] = {"kind": KINDS.get(name, name), "recommended": best,
                     "ap_loc_vs_stretch": _num(arms[best]["ap_loc"]) - _num(arms["stretch"]["ap_loc"])}
    return out


def _num(x: float) -> float:
    return -1.0 if x != x else float(x)


def goal(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The measured answer to issue 13's question: does keeping the native scale (tile) or the aspect ratio
    (letterbox) localise better than stretching, at the same training time?"""
    met, not_met = [], []
    for name, arms in results.items():
        for mode in ("letterbox", "tile"):
            a, s = _num(arms[mode]["ap_loc"]), _num(arms["stretch"]["ap_loc"])
            line = f"{name}: {mode} AP_loc {a:.3f} vs stretch {s:.3f}"
            (met if a >= s else not_met).append(line)
    return {"description": "at the same training time, letterbox and tile localise defects at least as well as "
                           "stretch (AP_loc), per dataset", "met": met, "not_met": not_met}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.resolution", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="generated data, tiny preset, seconds per arm (a smoke run)")
    p.add_argument("--datasets", nargs="*", default=None, help="subset of magnetic_tile crackforest pv_el_crackseg")
    p.add_argument("--train-seconds", type=float, default=None, help="training time per arm")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    import torch

    cfg = dict(QUICK if a.quick else SETTINGS)
    if a.train_seconds is not None:
        cfg["train_seconds"] = a.train_seconds
    torch.set_num_threads(cfg["threads"])
    quick_root = None
    if a.quick:
        import tempfile

        quick_root = write_quick_data(Path(tempfile.mkdtemp(prefix="resolution_")) / "data", cfg["images"])
    all_readers = readers(quick_root)
    names = a.datasets or list(all_readers)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        reader = Subset(all_readers[name], cfg["images"], cfg["seed"])
        results[name] = {}
        for mode in MODES:
            _log(f"{name}: {mode}, {cfg['train_seconds']} s of training ...")
            results[name][mode] = run_arm(reader, mode, cfg)
            _log(f"{name}: {mode}: {results[name][mode]}")
    payload = {"goal": goal(results), "settings": {**cfg, "datasets": {n: KINDS.get(n, n) for n in names},
                                                   "metrics_resolution": "each mode's working resolution: stretch "
                                                   "and letterbox at image_size (letterbox without padding), tile "
                                                   "at native pixels x tile_scale; masks by nearest neighbour"},
               "results": results, "recommended": recommend(results)}
    rows = [[n, m, r["p_auroc"], r["aupro"], r["ap_loc"], r["i_auroc"], r["images_per_s"], r["train_steps"]]
            for n, arms in results.items() for m, r in arms.items()]
    print_table("resize modes, CLIP-MDC supervised, same training time per arm",
                ["dataset", "mode", "P-AUROC", "AUPRO", "AP_loc", "I-AUROC", "images/s", "steps"], rows)
    if a.out is not None:
        import json

        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "resolution.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    else:
        write_results("resolution", payload)
    return payload


if __name__ == "__main__":
    main()
