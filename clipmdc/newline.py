"""``defectfm newline``: a new product line from good images only, on a generalist CLIP-MDC checkpoint (issue 16).

::

    defectfm newline --ckpt_path runs/generalist/checkpoints/last.ckpt --good /data/new_line/good \\
        --object bracket --out runs/bracket.ckpt [--defect_types "[good,crack,scratch]"] [--finetune_epochs 2]
    defectfm predict --ckpt_path runs/bracket.ckpt --input /data/new_line/today --object bracket --out runs/today

What it does, with no gradient step unless ``--finetune_epochs`` is given:

1. loads the checkpoint (no experiment YAML) and adds ``--object`` to the model's objects (its prompts come from
   the name, as every object's do) and, when given, sets the defect names it should know (open vocabulary);
2. splits the good images, seeded: most build the object's normal memory
   (:meth:`clipmdc.object_memory.ObjectMemory.add_object`: the checkpoint's other objects keep theirs), a held-out
   fraction (``--calibration_fraction``) calibrates the decision thresholds at the target false-alarm rate
   (``--target_far``, :mod:`common.calibration`; good images only, so F1 cannot be used);
3. optionally fine-tunes for a few epochs on the same good images in the normal-only regime with Perlin
   anomalies (the synthesis the checkpoint was built with, or the default one), then calibrates again;
4. writes a checkpoint that ``defectfm predict``, ``lightning test/predict`` and ``defectfm export`` take as any
   other: the generalist's config, the new memory and thresholds, the vocabulary with the new object, and a
   ``defectfm.newline`` record of what was done. Optimizer and loop states are left out (it is not a resume point).

A checkpoint whose memory is a plain :class:`~clipmdc.memory.NormalMemory` (one bank for every object) gets its bank
rebuilt from the new good images: it then serves the new line only (a line says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from common.calibration import ImageThresholdCalibrator, PixelThresholdCalibrator
from common.checkpoint import info, load_module, read_checkpoint
from common.cli_errors import OneLineParser, UsageError
from common.data.datamodule import DefectDataModule
from common.data.errors import DataError
from common.data.readers.base import Reader
from common.data.readers.images import ImageFilesReader
from common.data.splits import stratified_split
from common.data.types import DefectBatch, SampleRecord


def parser() -> argparse.ArgumentParser:
    """The options of ``defectfm newline``."""
    p = OneLineParser(prog="defectfm newline", description="a new product line from good images only: build its "
                "normal memory on a (generalist) CLIP-MDC checkpoint, calibrate its thresholds, write a checkpoint")
    p.add_argument("--ckpt_path", required=True, help="a CLIP-MDC checkpoint (e.g. the generalist's)")
    p.add_argument("--good", nargs="+", required=True, help="folders of the new product's defect-free images "
                   "(walked recursively) and/or image files")
    p.add_argument("--object", required=True, help="the new product's object name (worded in its prompts)")
    p.add_argument("--out", required=True, help="the checkpoint to write")
    p.add_argument("--defect_types", default=None, help='defect names it should know, e.g. "[good,crack,scratch]" '
                   "(entries may be 'name: description'); default: the checkpoint's")
    p.add_argument("--calibration_fraction", type=float, default=0.2,
                   help="fraction of the good images held out to calibrate the thresholds (default 0.2)")
    p.add_argument("--target_far", type=float, default=0.01, help="target false-alarm rate (default 0.01)")
    p.add_argument("--finetune_epochs", type=int, default=0, help="normal-only fine-tune epochs (default 0: none)")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tune learning rate (AdamW; default 1e-4)")
    p.add_argument("--image_size", type=int, default=None, help="input side (default: the checkpoint's)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the fine-tune")
    return p


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    text = text.strip()
    if text.startswith("[") and '"' in text:
        return [str(n) for n in json.loads(text)]
    return [n.strip().strip("'\"") for n in text.strip("[]").split(",") if n.strip()]


class GoodImages(Reader):
    """A folder of good images with newline's seeded split as its own: ``train`` builds the memory (and
    fine-tunes), ``val`` calibrates; ``test`` repeats ``val`` only because a DataModule needs one (never tested).

    Args:
        root: The folder (walked recursively); with ``files``, the folder they are relative to.
        object_name: The object of every image.
        calibration_fraction: Fraction held out for calibration (at least one image).
        seed: Seed of the split.
        files: Further folders or image files (relative to ``root`` or absolute).
    """

    layout = "good images"
    expected = ImageFilesReader.expected

    def __init__(self, root: str | Path, object_name: str, calibration_fraction: float = 0.2, seed: int = 0,
                 files: Sequence[str] | None = None) -> None:
        super().__init__(root)
        self.object_name, self.calibration_fraction, self.seed = object_name, calibration_fraction, seed
        self.files = files

    def _list(self) -> list[SampleRecord]:
        good = ImageFilesReader(self.root, self.files, object_name=self.object_name, defect_free=True).records()
        if len(good) < 2:
            raise DataError(f"{self.root}: {len(good)} image; newline needs at least 2 (memory and calibration)")
        memory, calibration = stratified_split(good, (1.0 - self.calibration_fraction, self.calibration_fraction),
                                               self.seed)
        return ([dataclasses.replace(r, split="train") for r in memory]
                + [dataclasses.replace(r, split=s) for r in calibration for s in ("val", "test")])


def good_data(ckpt: dict[str, Any], a: argparse.Namespace, augment: str = "none") -> DefectDataModule:
    """The good images as a DataModule: train = memory (and fine-tune) images, val = calibration images."""
    settings = info(ckpt).get("data") or {}
    if settings.get("resize", "stretch") != "stretch":  # calibrate() scores whole stretched images
        raise UsageError(f"--ckpt_path {a.ckpt_path}: defectfm newline supports checkpoints trained with resize: "
                         f"stretch, this one used {settings['resize']!r}")
    image_size = a.image_size or settings.get("image_size")
    if image_size is None:
        raise UsageError(f"--ckpt_path {a.ckpt_path}: the checkpoint records no image size; give --image_size")
    if not 0.0 < a.calibration_fraction < 1.0:
        raise UsageError(f"--calibration_fraction must be in (0, 1), got {a.calibration_fraction}")
    single = len(a.good) == 1
    reader = GoodImages(a.good[0] if single else ".", a.object, a.calibration_fraction, a.seed,
                        None if single else [str(Path(g).absolute()) for g in a.good])
    data = DefectDataModule(reader, image_size=image_size, batch_size=a.batch_size, num_workers=a.num_workers,
                            split="auto", seed=a.seed, augment=augment)
    data.setup("fit")  # DataError (one line) for a missing folder or one without images
    return data


def _batches(module: Any, loader: Any) -> Iterator[tuple[DefectBatch, Any]]:
    for batch in loader:
        batch = batch.to(module.device)
        yield batch, module._object_ids(batch)


@torch.no_grad()
def build_memory(module: Any, data: DefectDataModule, object_name: str) -> dict[str, float]:
    """Builds the object's normal memory from the DataModule's training (good) images, no gradient step."""
    from clipmdc.object_memory import ObjectMemory

    memory = module.model.memory
    if memory is None:
        raise UsageError("the checkpoint's model has no normal-reference memory; a new line from good images needs "
                         "one (train the generalist with memory: clipmdc.object_memory.ObjectMemory)")
    module.eval()
    object_id = module.model.object_names.index(object_name)

    def tokens() -> Iterator[tuple]:
        for batch, objects in _batches(module, data.reference_dataloader()):
            yield module.model.image_encoder(batch.image).tokens, module._sample_ids(batch), objects

    if isinstance(memory, ObjectMemory):
        return memory.add_object(object_id, tokens())
    print("defectfm newline: the checkpoint's memory is one bank for every object; it is rebuilt from the new good "
          "images and serves this line only")
    return memory.build(tokens())


@torch.no_grad()
def calibrate(module: Any, data: DefectDataModule, target_far: float) -> dict[str, Any]:
    """Image and pixel thresholds at ``target_far`` on the held-out good images (stored in the module)."""
    module.eval()
    image_cal, pixel_cal = ImageThresholdCalibrator(target_far), PixelThresholdCalibrator(target_far)
    for batch, objects in _batches(module, data.val_dataloader()):
        out = module.model(batch.image, objects)
        image_cal.update(out.image_prob.float().cpu(), torch.zeros(len(batch), dtype=torch.long))
        pixel_cal.update(out.anomaly_prob.float().cpu(), torch.zeros_like(out.anomaly_prob, dtype=torch.long).cpu())
    image, pixel = image_cal.compute(), pixel_cal.compute()
    module.thresholds.set(image, pixel)
    return module.thresholds.resolve()


def finetune(module: Any, data: DefectDataModule, epochs: int, lr: float, seed: int) -> float:
    """A short normal-only fine-tune on the good images with synthetic anomalies; returns seconds."""
    from functools import partial

    import lightning as L

    from common.synthesis import PerlinAnomalyGenerator

    L.seed_everything(seed, workers=True, verbose=False)
    module.regime = "normal_only"
    module.synthesis = module.synthesis or PerlinAnomalyGenerator()
    module.optimizer = partial(torch.optim.AdamW, lr=lr)
    module.scheduler = None
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu" if not torch.cuda.is_available() else "auto", devices=1,
                        logger=False, enable_checkpointing=False, limit_val_batches=0, enable_model_summary=False,
                        num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - start


def save(module: Any, ckpt: dict[str, Any], path: Path, record: dict[str, Any]) -> None:
    """Writes the new line's checkpoint (the generalist's config and data settings, the new weights and memory)."""
    out = {k: v for k, v in ckpt.items() if k not in ("optimizer_states", "lr_schedulers", "loops", "callbacks")}
    out["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    out["defectfm"] = dict(out.get("defectfm") or {})
    module.on_save_checkpoint(out)  # the vocabulary, with the new object
    out["defectfm"]["newline"] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)


def newline_main(argv: Sequence[str]) -> int:
    """``defectfm newline --ckpt_path CKPT --good FOLDER --object NAME --out NEW.ckpt [options]``; exit code."""
    a = parser().parse_args(list(argv))
    ckpt = read_checkpoint(a.ckpt_path)
    saved_objects = list(((ckpt.get("defectfm") or {}).get("vocabulary") or {}).get("object_names") or [])
    objects = saved_objects + ([a.object] if a.object not in saved_objects else [])
    overrides: dict[str, Any] = {"object_names": objects}
    if a.defect_types is not None:
        overrides["defect_types"] = _names(a.defect_types)
    module = load_module(a.ckpt_path, overrides)
    if not hasattr(module, "thresholds") or not hasattr(module.model, "memory"):
        raise UsageError(f"--ckpt_path {a.ckpt_path}: defectfm newline takes CLIP-MDC checkpoints")
    data = good_data(ckpt, a)
    n_mem, n_cal = len(data.split_records()["train"]), len(data.split_records()["val"])
    print(f"defectfm newline: {n_mem + n_cal} good images of {a.object!r}: {n_mem} build its memory, {n_cal} "
          f"calibrate the thresholds (target false-alarm rate {a.target_far:g})")
    start = time.perf_counter()
    memory = build_memory(module, data, a.object)
    record: dict[str, Any] = {"object": a.object, "good_images": n_mem + n_cal, "memory_images": n_mem,
                              "calibration_images": n_cal, "memory": memory, "finetune_epochs": a.finetune_epochs,
                              "seed": a.seed, "source_checkpoint": str(a.ckpt_path)}
    if a.finetune_epochs > 0:
        record["finetune_seconds"] = round(finetune(module, data, a.finetune_epochs, a.lr, a.seed), 1)
    record["thresholds"] = calibrate(module, data, a.target_far)
    record["seconds"] = round(time.perf_counter() - start, 1)
    save(module, ckpt, Path(a.out), record)
    t = record["thresholds"]
    print(f"defectfm newline: wrote {a.out} (objects {', '.join(module.model.object_names)}; memory "
          f"{int(memory['bank'])} patches; image threshold {t['image_threshold']:.4g}, pixel threshold "
          f"{t['pixel_threshold']:.4g} at target FAR {a.target_far:g}; {record['seconds']} s)")
    return 0
