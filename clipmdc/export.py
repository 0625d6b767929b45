"""Export CLIP-MDC to ONNX (and TorchScript), and run an exported file like ``lightning predict``.

The exported graph takes ``image`` ``(B, 3, H, W)`` float in [0, 1] and returns ``anomaly_map`` ``(B, 1, H, W)``
probabilities, ``image_score`` ``(B,)`` probabilities and ``type_probs`` ``(B, K+1)``. The vocabulary's text
embeddings are baked in as constants (embedded once at export), and the names, object and image size are stored
in the ONNX metadata with the decision thresholds (calibrated on the validation split, or given), so an exported
file is self-describing, and ``onnx-predict`` decides and draws regions as ``lightning predict`` does::

    defectfm export --config configs/clipmdc/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt --out model.onnx
    defectfm onnx-predict --onnx model.onnx --input data/demo/plate/test/scratch --out runs/onnx_predict
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from clipmdc.explain import explain_outputs
from clipmdc.model import CLIPMDC
from common.calibration import DecisionThresholds
from common.data.dataset import DefectDataset, collate_samples
from common.data.errors import DataError
from common.data.io import list_images
from common.data.tiling import RESIZE_MODES, TileSpec, pair
from common.data.transforms import build_transform
from common.data.types import NORMAL, SampleRecord
from common.onnx_compat import antialias_as_matmul
from common.tiled import mode_outputs

OUTPUT_NAMES = ("anomaly_map", "image_score", "type_probs")
THRESHOLD_KEYS = ("image_threshold", "pixel_threshold", "threshold_mode", "pixel_threshold_mode", "target_far")
"""Decision-threshold entries of the ONNX metadata (JSON values), see :meth:`DecisionThresholds.resolve`."""
RESIZE_KEYS = ("resize", "tile_overlap", "tile_scale")
"""Resize-mode entries of the ONNX metadata (JSON values): the graph takes input-size images; letterboxing and
tiling (cut, batches, stitching) run outside it, in ``onnx-predict``, with :mod:`common.tiled` as in PyTorch."""


class ExportWrapper(nn.Module):
    """Inference-only view of :class:`~clipmdc.model.CLIPMDC` with tensor outputs (probabilities).

    Args:
        model: A trained model whose vocabulary is the one to export.
        object_index: Object whose prompts are used (for ``per_object_prompts`` models); ``None`` = averaged.
    """

    def __init__(self, model: CLIPMDC, object_index: int | None = None) -> None:
        super().__init__()
        if model.per_object_prompts and len(model.object_names) > 1 and object_index is None:
            raise ValueError(  # averaged prompts would give other maps than lightning predict's per-object ones
                f"this model uses per-object prompts: export one object at a time (--object, one of "
                f"{model.object_names})")
        self.model = model.eval()
        self.model.embed_vocabulary()  # text embeddings become constants of the graph
        self.object_index = object_index

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> anomaly map ``(B, 1, H, W)``, image score ``(B,)``, types ``(B, K+1)``."""
        object_id = None
        if self.object_index is not None:
            object_id = torch.full((image.shape[0],), self.object_index, dtype=torch.long, device=image.device)
        out = self.model(image, object_id)
        return out.anomaly_prob, out.image_prob, out.type_prob_image


def _modes(model: nn.Module) -> tuple[nn.Module, torch.device, dict[nn.Module, bool]]:
    device = next(model.parameters()).device
    return model, device, {m: m.training for m in model.modules()}


def _restore_modes(state: tuple[nn.Module, torch.device, dict[nn.Module, bool]]) -> None:
    """Puts the model back on its device and every submodule in its train/eval mode: exporting must not change
    the model (torch.onnx.export restores the *wrapper's* mode recursively, which used to leave the model in
    training mode, BatchNorm on batch statistics, after an export)."""
    model, device, modes = state
    model.to(device)
    for module, training in modes.items():
        module.training = training


def export_onnx(
    model: CLIPMDC,
    path: str | Path,
    image_size: int | Sequence[int] = 256,
    object_index: int | None = None,
    opset: int = 18,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Exports ``model`` to an ONNX file with a dynamic batch axis.

    Args:
        model: The trained network.
        path: Output ``.onnx`` file.
        image_size: Input side or ``(H, W)`` (fixed in the graph; resize inputs to it).
        object_index: See :class:`ExportWrapper`.
        opset: ONNX opset.
        metadata: Extra metadata strings stored in the file.

    Returns:
        The written path.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    modes = _modes(model)
    wrapper = ExportWrapper(model, object_index).cpu().float().eval()
    example = torch.rand(2, 3, h, w)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # nn.MultiheadAttention's eval fast path (open_clip's ViT) is the fused aten::_native_multi_head_attention,
    # which has no ONNX symbolic: trace the plain attention ops instead (same result).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), antialias_as_matmul():  # antialiased resizes have no ONNX symbolic
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                input_names=["image"],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        _restore_modes(modes)
    import onnx

    proto = onnx.load(str(path))
    meta = {
        "defect_types": json.dumps(model.defect_types),
        "object_names": json.dumps(model.object_names),
        "object_index": json.dumps(object_index),
        "image_size": json.dumps([h, w]),
        **(metadata or {}),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def export_torchscript(model: CLIPMDC, path: str | Path, image_size: int = 256, object_index: int | None = None) -> Path:
    """Traces the inference view to TorchScript (same inputs/outputs as the ONNX graph)."""
    modes = _modes(model)
    wrapper = ExportWrapper(model, object_index).cpu().float().eval()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, torch.rand(1, 3, image_size, image_size), check_trace=False)
    finally:
        _restore_modes(modes)
    path = Path(path)
    traced.save(str(path))
    return path


class OnnxPredictor:
    """Runs an exported CLIP-MDC file with onnxruntime.

    Args:
        path: The ``.onnx`` file written by :func:`export_onnx`.
        providers: onnxruntime execution providers (default: CPU).

    Attributes:
        thresholds: The decision thresholds stored at export (:meth:`DecisionThresholds.resolve` keys; 0.5 and
            mode ``"none"`` for files exported without them).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: ONNX file not found")
        self.session = ort.InferenceSession(str(self.path), providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.defect_types: list[str] = json.loads(meta["defect_types"])
        self.object_names: list[str] = json.loads(meta["object_names"])
        self.image_size: tuple[int, int] = tuple(json.loads(meta["image_size"]))
        index = json.loads(meta.get("object_index", "null"))
        self.object_name = self.object_names[index] if index is not None else "/".join(self.object_names)
        self.thresholds: dict[str, Any] = {**DecisionThresholds().resolve(),
                                           **{k: json.loads(meta[k]) for k in THRESHOLD_KEYS if k in meta}}
        # how images become input (files exported before resize modes existed: stretch)
        self.resize: dict[str, Any] = {"resize": "stretch", "tile_overlap": 0.25, "tile_scale": 1.0,
                                       **{k: json.loads(meta[k]) for k in RESIZE_KEYS if k in meta}}

    def outputs(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> the probabilities as :func:`common.tiled.mode_outputs` takes them."""
        out = self(image.detach().cpu().numpy())
        return {"anomaly_prob": torch.from_numpy(out["anomaly_map"]), "image_prob": torch.from_numpy(out["image_score"]),
                "type_prob": torch.from_numpy(out["type_probs"])}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, 3, H, W)`` float32 in [0, 1] -> ``{"anomaly_map", "image_score", "type_probs"}``."""
        outs = self.session.run(list(OUTPUT_NAMES), {"image": np.ascontiguousarray(image, dtype=np.float32)})
        return dict(zip(OUTPUT_NAMES, outs, strict=True))


def input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files of ``inputs`` (files, or folders searched recursively), sorted per folder."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += list_images(item, recursive=True)  # hidden and system files (.*, __MACOSX) ignored
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def image_loader(files: Sequence[Path], size: int | Sequence[int], object_name: str, batch_size: int,
                 resize: str = "stretch", tile_overlap: float = 0.25, tile_scale: float = 1.0) -> DataLoader:
    """Batches of the files read and resized exactly as ``lightning predict`` reads them: the DataModule's
    dataset (:class:`~common.data.dataset.DefectDataset`, :func:`~common.data.io.load_sample`) with its
    evaluation transform (:func:`~common.data.transforms.build_transform` ``augment="none"``) and resize mode
    (``tile``: one whole image per batch, its tiles run ``batch_size`` at a time)."""
    records = [SampleRecord(image_path=p, object_name=object_name, defect_type=NORMAL, is_anomalous=None)
               for p in files]
    tiles = TileSpec(pair(size), tile_overlap, batch_size, tile_scale) if resize == "tile" else None
    dataset = DefectDataset(records, [NORMAL], [object_name], build_transform(size, "none", resize=resize),
                            on_error="mark", resize=resize, image_size=size, tiles=tiles)
    return DataLoader(dataset, batch_size=1 if tiles else batch_size, shuffle=False, collate_fn=collate_samples)


def _onnx_explain(predictor: OnnxPredictor, batch: Any, thresholds: dict[str, Any]) -> list:
    """Explained predictions of one batch of readable images, decided as ``lightning predict`` decides, in the
    original image's pixels."""
    out = mode_outputs(predictor.outputs, batch.image, batch.content_box, batch.tiling)
    return explain_outputs(out, batch, predictor.defect_types, **thresholds)


def onnx_predict(onnx_path: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, batch_size: int = 8,
                 image_threshold: float | None = None, pixel_threshold: float | None = None,
                 resize: dict[str, Any] | None = None) -> Path:
    """Predicts image files or folders with an exported model, writing what ``lightning predict`` writes (same
    image reading and resizing, same decisions and regions).

    Args:
        onnx_path: The exported file.
        inputs: Image files or folders (searched recursively).
        out_dir: Output folder.
        batch_size: Images (tiles in ``tile`` mode) per onnxruntime call.
        image_threshold: Overrides the exported (calibrated) image threshold.
        pixel_threshold: Overrides the exported (calibrated) pixel threshold.
        resize: Overrides of the exported resize settings (``resize``, ``tile_overlap``, ``tile_scale``).

    Returns:
        The output folder (overlays/, maps/, predictions.jsonl, contact_sheet.png, summary.csv).
    """
    from types import SimpleNamespace

    from common.prediction import PredictionWriter, predict_readable

    files = input_files(inputs)
    predictor = OnnxPredictor(onnx_path)
    thresholds = dict(predictor.thresholds)
    for key, given in (("image", image_threshold), ("pixel", pixel_threshold)):
        if given is not None:  # what the user gives wins
            thresholds[f"{key}_threshold"] = float(given)
            thresholds["threshold_mode" if key == "image" else "pixel_threshold_mode"] = "given"
    settings = {**predictor.resize, **{k: v for k, v in (resize or {}).items() if v is not None}}
    writer = PredictionWriter(str(out_dir))
    trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True)
    writer.on_predict_epoch_start(trainer, None)
    loader = image_loader(files, predictor.image_size, predictor.object_name, batch_size, **settings)
    for i, batch in enumerate(loader):
        # an unreadable file is a placeholder listed in errors.csv; it never stops the run
        preds = predict_readable(batch, lambda b: _onnx_explain(predictor, b, thresholds))
        writer.write_on_batch_end(trainer, None, preds, None, None, i)
    writer.on_predict_epoch_end(trainer, None)
    return Path(out_dir)


def export_module(module: Any, path: str | Path, image_size: int | Sequence[int],
                  object_index: int | None = None, resize: dict[str, Any] | None = None) -> Path:
    """Exports a :class:`~clipmdc.module.CLIPMDCModule`'s network with its decision thresholds (the calibrated
    ones, or those given to the module) and the data's resize settings (``resize``, ``tile_overlap``,
    ``tile_scale``: :attr:`common.data.DefectDataModule.settings`) in the ONNX metadata."""
    thresholds = module.decision_thresholds()
    meta = {k: json.dumps(thresholds[k]) for k in THRESHOLD_KEYS}
    meta.update({k: json.dumps(v) for k, v in (resize or {}).items() if k in RESIZE_KEYS})
    return export_onnx(module.model, path, image_size, object_index, metadata=meta)


def export_main(argv: Sequence[str]) -> None:
    """``defectfm export --config EXP.yaml --ckpt_path CKPT --out model.onnx [--torchscript model.pt]``."""
    p = argparse.ArgumentParser(prog="defectfm export", description="export a trained CLIP-MDC to ONNX")
    p.add_argument("--config", action="append", required=True, help="experiment YAML (repeatable, as for fit)")
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--out", default="model.onnx")
    p.add_argument("--torchscript", default=None, help="also write a TorchScript file here")
    p.add_argument("--object", default=None, help="object whose prompts to use (per-object prompt models)")
    p.add_argument("--int8", choices=("dynamic", "static"), default=None,
                   help="also write an INT8 file next to --out (clipmdc.quantize; static: calibrated on "
                   "--calibration-images training images)")
    p.add_argument("--calibration-images", type=int, default=32, help="training images for --int8 static")
    a = p.parse_args(argv)
    from common.cli import DefectCLI

    cli = DefectCLI(args=[x for c in a.config for x in ("--config", c)], run=False)
    module, dm = cli.model, cli.datamodule
    module._configure_vocabulary(dm.vocabulary, dm.object_names)
    state = torch.load(a.ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state, strict=True)
    object_index = module.model.object_names.index(a.object) if a.object else None
    size = dm.image_size
    path = export_module(module, a.out, size, object_index, getattr(dm, "settings", None))
    t = module.decision_thresholds()
    print(f"ONNX: {path} (input image (B, 3, {size}, {size}) in [0, 1]; vocabulary {module.model.defect_types}; "
          f"image threshold {t['image_threshold']:.4g} ({t['threshold_mode']}), pixel threshold "
          f"{t['pixel_threshold']:.4g} ({t['pixel_threshold_mode']}))")
    if a.torchscript:
        print(f"TorchScript: {export_torchscript(module.model, a.torchscript, size, object_index)}")
    if a.int8:
        from clipmdc.quantize import quantize_onnx

        int8 = Path(a.out).with_name(Path(a.out).stem + f"_int8_{a.int8}.onnx")
        calibration = None
        if a.int8 == "static":
            batches = (b.image.numpy() for b in dm.train_dataloader())
            calibration = _first_images(batches, a.calibration_images)
        print(f"INT8 ({a.int8}): {quantize_onnx(path, int8, a.int8, calibration)}")


def _first_images(batches: Any, n: int) -> list[np.ndarray]:
    """The first ``n`` images of ``batches`` (``(B, 3, H, W)`` arrays), as a list of batches."""
    out, seen = [], 0
    for b in batches:
        if seen >= n:
            break
        out.append(b[: n - seen])
        seen += len(out[-1])
    return out


def onnx_predict_main(argv: Sequence[str]) -> int:
    """``defectfm onnx-predict --onnx model.onnx --input IMG_OR_DIR [...] --out DIR [--image-threshold T]``; returns
    the exit code (non-zero when some files could not be read)."""
    p = argparse.ArgumentParser(prog="defectfm onnx-predict", description="predict with an exported ONNX file")
    p.add_argument("--onnx", required=True)
    p.add_argument("--input", nargs="+", required=True, help="image files or folders")
    p.add_argument("--out", default="runs/onnx_predict")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-threshold", type=float, default=None,
                   help="image decision threshold (default: the one stored in the file, calibrated at training)")
    p.add_argument("--pixel-threshold", type=float, default=None,
                   help="pixel region threshold (default: the one stored in the file)")
    p.add_argument("--resize", choices=RESIZE_MODES, default=None,
                   help="stretch, letterbox or tile (default: the one stored in the file, the training mode)")
    p.add_argument("--tile-overlap", type=float, default=None, help="tile mode overlap (default: the file's)")
    p.add_argument("--tile-scale", type=float, default=None, help="tile mode working scale (default: the file's)")
    a = p.parse_args(argv)
    resize = {"resize": a.resize, "tile_overlap": a.tile_overlap, "tile_scale": a.tile_scale}
    out = onnx_predict(a.onnx, a.input, a.out, a.batch_size, a.image_threshold, a.pixel_threshold, resize)
    print(f"predictions written to {out}")
    from common.prediction import EXIT_SOME_FAILED, count_errors

    return EXIT_SOME_FAILED if count_errors(out) else 0
