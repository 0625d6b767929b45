"""Export CLIP-MDC to ONNX (and TorchScript), and run an exported file like ``lightning predict``.

The exported graph takes ``image`` ``(B, 3, H, W)`` float in [0, 1] and returns ``anomaly_map`` ``(B, 1, H, W)``
probabilities, ``image_score`` ``(B,)`` probabilities and ``type_probs`` ``(B, K+1)``. The vocabulary's text
embeddings are baked in as constants (embedded once at export), and the names, object and image size are stored
in the ONNX metadata, so an exported file is self-describing::

    defectfm export --config configs/clipmdc/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt --out model.onnx
    defectfm onnx-predict --onnx model.onnx --input data/demo/plate/test/scratch --out runs/onnx_predict
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipmdc.explain import explain_batch
from clipmdc.model import CLIPMDC
from clipmdc.output import CLIPMDCOutput
from common.data.errors import DataError
from common.data.io import is_image_file, read_image
from common.onnx_compat import antialias_as_matmul

OUTPUT_NAMES = ("anomaly_map", "image_score", "type_probs")


class ExportWrapper(nn.Module):
    """Inference-only view of :class:`~clipmdc.model.CLIPMDC` with tensor outputs (probabilities).

    Args:
        model: A trained model whose vocabulary is the one to export.
        object_index: Object whose prompts are used (for ``per_object_prompts`` models); ``None`` = averaged.
    """

    def __init__(self, model: CLIPMDC, object_index: int | None = None) -> None:
        super().__init__()
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
    wrapper = ExportWrapper(model, object_index).cpu().float()
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
    wrapper = ExportWrapper(model, object_index).cpu().float()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, torch.rand(1, 3, image_size, image_size), check_trace=False)
    path = Path(path)
    traced.save(str(path))
    return path


class OnnxPredictor:
    """Runs an exported CLIP-MDC file with onnxruntime.

    Args:
        path: The ``.onnx`` file written by :func:`export_onnx`.
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file {self.path} does not exist")
        self.session = ort.InferenceSession(str(self.path), providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.defect_types: list[str] = json.loads(meta["defect_types"])
        self.object_names: list[str] = json.loads(meta["object_names"])
        self.image_size: tuple[int, int] = tuple(json.loads(meta["image_size"]))
        index = json.loads(meta.get("object_index", "null"))
        self.object_name = self.object_names[index] if index is not None else "/".join(self.object_names)

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, 3, H, W)`` float32 in [0, 1] -> ``{"anomaly_map", "image_score", "type_probs"}``."""
        outs = self.session.run(list(OUTPUT_NAMES), {"image": np.ascontiguousarray(image, dtype=np.float32)})
        return dict(zip(OUTPUT_NAMES, outs, strict=True))

    def as_output(self, result: dict[str, np.ndarray]) -> CLIPMDCOutput:
        """Wraps probabilities as a :class:`CLIPMDCOutput` (logits) so explanations work unchanged."""
        eps = 1e-7
        amap = torch.from_numpy(result["anomaly_map"]).clamp(eps, 1 - eps)
        score = torch.from_numpy(result["image_score"]).clamp(eps, 1 - eps)
        types = torch.from_numpy(result["type_probs"]).clamp_min(eps)
        b = amap.shape[0]
        return CLIPMDCOutput(
            anomaly_map=torch.logit(amap),
            type_map=types.log()[:, :, None, None].expand(b, -1, *amap.shape[-2:]),
            image_score=torch.logit(score),
            topk_score=torch.logit(score),
            type_logits=types.log(),
            embedding=torch.zeros(b, 1),
            defect_types=list(self.defect_types),
        )


def load_images(paths: Sequence[Path], size: tuple[int, int]) -> torch.Tensor:
    """Reads and resizes images to ``(N, 3, H, W)`` float in [0, 1] (as the DataModule's eval transform)."""
    from common.data.transforms import build_transform

    t = build_transform(size, "none")
    arrays = [t(image=read_image(p))["image"] for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def onnx_predict(onnx_path: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, batch_size: int = 8,
                 image_threshold: float = 0.5, pixel_threshold: float = 0.5) -> Path:
    """Predicts image files or folders with an exported model, writing what ``lightning predict`` writes.

    Returns:
        The output folder (overlays/, maps/, predictions.jsonl, contact_sheet.png, summary.csv).
    """
    from types import SimpleNamespace

    from common.prediction import PredictionWriter

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    predictor = OnnxPredictor(onnx_path)
    writer = PredictionWriter(str(out_dir))
    trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True)
    writer.on_predict_epoch_start(trainer, None)
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        images = load_images(chunk, predictor.image_size)
        output = predictor.as_output(predictor(images.numpy()))
        preds = explain_batch(output, images, [predictor.object_name] * len(chunk), [str(p) for p in chunk],
                              image_threshold=image_threshold, pixel_threshold=pixel_threshold)
        writer.write_on_batch_end(trainer, None, preds, None, None, i // batch_size)
    writer.on_predict_epoch_end(trainer, None)
    return Path(out_dir)


def export_main(argv: Sequence[str]) -> None:
    """``defectfm export --config EXP.yaml --ckpt_path CKPT --out model.onnx [--torchscript model.pt]``."""
    p = argparse.ArgumentParser(prog="defectfm export", description="export a trained CLIP-MDC to ONNX")
    p.add_argument("--config", action="append", required=True, help="experiment YAML (repeatable, as for fit)")
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--out", default="model.onnx")
    p.add_argument("--torchscript", default=None, help="also write a TorchScript file here")
    p.add_argument("--object", default=None, help="object whose prompts to use (per-object prompt models)")
    a = p.parse_args(argv)
    from common.cli import DefectCLI

    cli = DefectCLI(args=[x for c in a.config for x in ("--config", c)], run=False)
    module, dm = cli.model, cli.datamodule
    module._configure_vocabulary(dm.vocabulary, dm.object_names)
    state = torch.load(a.ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state, strict=True)
    object_index = module.model.object_names.index(a.object) if a.object else None
    size = dm.image_size
    path = export_onnx(module.model, a.out, size, object_index)
    print(f"ONNX: {path} (input image (B, 3, {size}, {size}) in [0, 1]; vocabulary {module.model.defect_types})")
    if a.torchscript:
        print(f"TorchScript: {export_torchscript(module.model, a.torchscript, size, object_index)}")


def onnx_predict_main(argv: Sequence[str]) -> None:
    """``defectfm onnx-predict --onnx model.onnx --input IMG_OR_DIR [...] --out DIR``."""
    p = argparse.ArgumentParser(prog="defectfm onnx-predict", description="predict with an exported ONNX file")
    p.add_argument("--onnx", required=True)
    p.add_argument("--input", nargs="+", required=True, help="image files or folders")
    p.add_argument("--out", default="runs/onnx_predict")
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args(argv)
    out = onnx_predict(a.onnx, a.input, a.out, a.batch_size)
    print(f"predictions written to {out}")
