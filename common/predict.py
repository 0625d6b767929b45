"""``defectfm predict``: predict a folder with only a checkpoint, no experiment YAML and no training data.

::

    defectfm predict --ckpt_path runs/demo/checkpoints/last.ckpt --input /data/new_batch --out runs/new_batch

Images are fed as in training: the checkpoint's resize mode (``stretch``, ``letterbox`` or ``tile``, with its
tile overlap and scale; ``--resize`` and ``--tile_*`` win), and maps, regions, boxes, areas and overlays come back
in each image file's own pixels.

Every image in the folder and its sub-folders is predicted (hidden and system files such as
``.ipynb_checkpoints/``, ``__MACOSX/``, ``Thumbs.db`` are ignored; ``--input`` also takes image files, several
inputs at once), and the count is printed. The model is rebuilt from the config stored in the checkpoint
(:mod:`common.checkpoint`), the images are resized and normalised as in training, and the output is that of
``lightning predict`` with :class:`~common.prediction.PredictionWriter`: ``overlays/``, ``maps/``,
``predictions.jsonl``, ``contact_sheet.png``, ``summary.csv`` (and the resolved ``config.yaml``).

Settings given here win over the checkpoint's: ``--defect_types "[good,scratch,dent]"``, ``--object_names``,
``--object NAME`` (object of every image), ``--image_threshold 0.7``, ``--pixel_threshold``, ``--image_size``,
``--resize``, ``--tile_overlap``, ``--tile_scale``,
``--batch_size``, ``--num_workers``, ``--accelerator``; any further ``--key value`` is passed to the
LightningCLI as is (e.g. ``--model.init_args.model.init_args.smooth_sigma 2``).

It builds on the same DataModule, model ``predict_step`` and writer as ``lightning predict``: it is that command
with the checkpoint's config as the config and an :class:`~common.data.ImageFilesReader` as the data.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.checkpoint import info, model_config, read_checkpoint, vocabulary
from common.cli_errors import OneLineParser, UsageError, arguments_of
from common.data.readers.images import ImageFilesReader
from common.data.tiling import RESIZE_MODES

# option -> the constructor argument it sets, first one the model has (CLIP-MDC, then stage 2)
MODEL_OPTIONS = {
    "defect_types": ("defect_types", "test_classes"),
    "object_names": ("object_names",),
    "image_threshold": ("image_threshold",),
    "pixel_threshold": ("pixel_threshold",),
}


def parser() -> argparse.ArgumentParser:
    """The options of ``defectfm predict --input``."""
    p = OneLineParser(prog="defectfm predict", description="predict every image of a folder with only a "
                                "checkpoint (the output of lightning predict)",
                                epilog="any further --key value is passed to the LightningCLI")
    p.add_argument("--ckpt_path", required=True, help="a checkpoint written by lightning fit")
    p.add_argument("--input", nargs="+", required=True, help="folders (walked recursively) and/or image files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--defect_types", default=None, help='defect-type names, e.g. "[good,scratch,dent]"')
    p.add_argument("--object_names", default=None, help='object names of the model, e.g. "[plate,fabric]"')
    p.add_argument("--object", default=None, help="object name of every image (default: the checkpoint's only "
                   "object, else a folder on the image's path named like one of its objects)")
    p.add_argument("--image_threshold", type=float, default=None, help="image anomaly probability threshold")
    p.add_argument("--pixel_threshold", type=float, default=None, help="pixel anomaly probability threshold")
    p.add_argument("--image_size", type=int, default=None, help="input side (default: the training size)")
    p.add_argument("--resize", choices=RESIZE_MODES, default=None,
                   help="stretch, letterbox or tile (default: the checkpoint's, the mode it was trained in)")
    p.add_argument("--tile_overlap", type=float, default=None, help="tile mode: overlap fraction (default: the "
                   "checkpoint's)")
    p.add_argument("--tile_scale", type=float, default=None, help="tile mode: working scale relative to the "
                   "image files (default: the checkpoint's)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="only the folder's own images")
    return p


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip().strip("'\"") for n in text.strip().strip("[]").split(",") if n.strip()]


def _reader_config(a: argparse.Namespace, objects: list[str]) -> dict[str, Any]:
    single = len(a.input) == 1
    object_name = a.object or (objects[0] if len(objects) == 1 else None)
    return {"class_path": "common.data.ImageFilesReader",
            "init_args": {"root": a.input[0] if single else ".",
                          "files": None if single else [str(Path(i).absolute()) for i in a.input],
                          "recursive": a.recursive, "object_name": object_name, "object_names": objects}}


def resize_settings(a: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """The resize mode and tiling to predict with: the command line's, else the checkpoint's (its ``defectfm``
    block), else ``stretch``."""
    out = {"resize": a.resize or settings.get("resize") or "stretch"}
    for key in ("tile_overlap", "tile_scale"):
        value = getattr(a, key) if getattr(a, key) is not None else settings.get(key)
        if value is not None:
            out[key] = float(value)
    return out


def cli_args(argv: Sequence[str]) -> tuple[list[str], ImageFilesReader]:
    """The ``lightning predict`` arguments that ``defectfm predict argv`` runs, and the reader of its images.

    Raises:
        UsageError: A missing or unusable checkpoint, or an option the checkpoint's model does not have.
        DataError: A missing input, a file that is not an image, a folder with no images.
    """
    a, rest = parser().parse_known_args(list(argv))
    ckpt = read_checkpoint(a.ckpt_path)
    model = model_config(ckpt)
    if model is None:
        raise UsageError(f"--ckpt_path {a.ckpt_path}: the checkpoint records no model config (it predates defectfm "
                         "predict); use lightning predict --config EXPERIMENT.yaml --ckpt_path ... instead")
    settings = info(ckpt).get("data") or {}
    image_size = a.image_size or settings.get("image_size")
    if image_size is None:
        raise UsageError(f"--ckpt_path {a.ckpt_path}: the checkpoint records no image size; give --image_size")
    objects = _names(a.object_names) or vocabulary(ckpt).get("object_names") or []
    reader_cfg = _reader_config(a, objects)
    reader = ImageFilesReader(**reader_cfg["init_args"])
    records = reader.records()  # DataError (one line) for a missing input or a folder without images
    per_object = ((model.get("init_args") or {}).get("model") or {}).get("init_args", {}).get("per_object_prompts")
    unknown = sorted({r.object_name for r in records} - set(objects))
    if per_object and unknown and len(objects) > 1:
        raise UsageError(f"the model uses per-object prompts for {', '.join(objects)}; the images' object "
                         f"{unknown[0]!r} is not one of them: give --object NAME")
    has = set(arguments_of(model["class_path"]))
    args = ["predict", "--ckpt_path", str(a.ckpt_path)]
    for option, candidates in MODEL_OPTIONS.items():
        value = getattr(a, option)
        if value is None:
            continue
        target = next((c for c in candidates if c in has), None)
        if target is None:
            raise UsageError(f"--{option}: the checkpoint's model ({model['class_path']}) has no such setting")
        if option in ("defect_types", "object_names"):
            value = json.dumps(_names(value))
        args += [f"--model.init_args.{target}", str(value)]
    data = {"class_path": "common.data.DefectDataModule",
            "init_args": {"reader": reader_cfg, "predict_reader": reader_cfg, "image_size": image_size,
                          "batch_size": a.batch_size, "eval_batch_size": a.batch_size,
                          "num_workers": a.num_workers, "augment": "none", **resize_settings(a, settings)}}
    writer = [{"class_path": "common.prediction.PredictionWriter", "init_args": {"output_dir": a.out}}]
    args += ["--data", json.dumps(data), "--trainer.callbacks", json.dumps(writer), "--trainer.logger", "false",
             "--trainer.default_root_dir", a.out, "--trainer.accelerator", a.accelerator, "--trainer.devices", "1",
             "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false", *rest]
    return args, reader


def predict_main(argv: Sequence[str]) -> int:
    """``defectfm predict --ckpt_path CKPT --input FOLDER_OR_FILES --out DIR [options]``; returns the exit code."""
    from common.cli import run_cli

    args, reader = cli_args(argv)
    n = len(reader.records())
    inputs = ", ".join(str(p) for p in reader.inputs())
    where = " and sub-folders" if reader.recursive else ""
    print(f"defectfm predict: {n} image{'s' if n != 1 else ''} in {inputs}{where} (hidden and system files ignored)")
    return run_cli(args)


def image_dataset(settings: dict[str, Any], object_name: str = "object", batch_size: int = 8) -> Any:
    """The predict dataset of a checkpoint's data settings (its ``defectfm`` block's ``data``: ``image_size``,
    ``resize``, ``tile_overlap``, ``tile_scale``), without records: :meth:`~common.data.dataset.DefectDataset.
    array_item` turns pixels into items as ``defectfm predict`` turns files."""
    from common.data.dataset import DefectDataset
    from common.data.tiling import TileSpec, pair
    from common.data.transforms import build_transform
    from common.data.types import NORMAL

    size, resize = settings["image_size"], settings.get("resize") or "stretch"
    tiles = TileSpec(pair(size), float(settings.get("tile_overlap", 0.25)), batch_size,
                     float(settings.get("tile_scale", 1.0))) if resize == "tile" else None
    return DefectDataset([], [NORMAL], [object_name], build_transform(size, "none", resize=resize), resize=resize,
                         image_size=size, tiles=tiles, on_error="mark")


def predict_image(module: Any, image: Any, settings: dict[str, Any], path: str = "<array>",
                  object_name: str | None = None) -> Any:
    """Predicts one already-loaded image as ``defectfm predict`` predicts a file (same resizing or tiling, same
    decisions; map, regions and boxes in the image's own pixels), e.g. for a server.

    Args:
        module: A LightningModule with a ``predict_step`` returning :class:`~common.prediction.ImagePrediction` s,
            e.g. from :func:`common.checkpoint.load_module`.
        image: ``(H, W, 3)`` uint8 RGB array.
        settings: The checkpoint's data settings (``common.checkpoint.info(ckpt)["data"]``), possibly with
            overrides (``resize``...).
        path: Name reported for the image.
        object_name: The image's object (default: the model's only/first object).

    Returns:
        Its :class:`~common.prediction.ImagePrediction`.
    """
    import torch

    from common.data.dataset import collate_samples

    objects = list(getattr(getattr(module, "model", None), "object_names", None) or ["object"])
    dataset = image_dataset(settings, object_name or objects[0])
    batch = collate_samples([dataset.array_item(image, path, object_name or objects[0])]).to(module.device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module.predict_step(batch, 0)[0]
    finally:
        module.train(was_training)
