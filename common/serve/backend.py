"""The model behind ``defectfm serve``: a checkpoint (CLIP-MDC or stage 2) or an exported ONNX file.

Both predict a list of image files exactly as ``defectfm predict`` does: the files are read and resized by the
DataModule's predict dataset (:func:`load_batch`, built from the checkpoint's data settings), the checkpoint's
``predict_step`` (or :func:`clipmdc.export.onnx_predict`'s explanation of the ONNX outputs) turns them into
:class:`~common.prediction.ImagePrediction` s, and the same :class:`~common.prediction.PredictionWriter` writes
them (:mod:`common.serve.recorder`). A request may change the vocabulary and the thresholds for itself only
(:data:`common.predict.MODEL_OPTIONS`): the module's settings are switched in place, never reloaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from common.checkpoint import info, load_module, model_config, read_checkpoint, vocabulary
from common.cli_errors import UsageError, arguments_of
from common.data.datamodule import DefectDataModule
from common.data.dataset import collate_samples
from common.data.readers.base import Reader
from common.data.types import NORMAL, DefectBatch, SampleRecord
from common.predict import MODEL_OPTIONS
from common.prediction import ImagePrediction
from common.serve.inputs import OVERRIDES, BadRequest

VOCABULARY_OPTIONS = ("defect_types", "object_names")


class _Listed(Reader):
    """A reader of records already known (the files of one batch of requests)."""

    layout = "request files"
    expected = "the images of the requests"

    def __init__(self, records: Sequence[SampleRecord]) -> None:
        super().__init__(".")
        self._given = list(records)

    def _list(self) -> list[SampleRecord]:
        return list(self._given)


def load_batch(files: Sequence[tuple[Path, str]], settings: Mapping[str, Any]) -> DefectBatch:
    """The batch ``defectfm predict`` would feed the model for ``files``, in their order.

    Args:
        files: ``(image file, object name)`` pairs.
        settings: DataModule arguments the checkpoint records (``image_size``, ...; others are ignored).
    """
    records = [SampleRecord(Path(p), obj, NORMAL, None) for p, obj in files]
    accepted = set(inspect.signature(DefectDataModule).parameters)
    kwargs = {k: v for k, v in settings.items() if k in accepted}
    reader = _Listed(records)
    dm = DefectDataModule(reader=reader, predict_reader=reader, augment="none", num_workers=0, **kwargs)
    dataset = dm.dataset("predict")
    items = {it["path"]: it for it in (dataset[i] for i in range(len(dataset)))}
    return collate_samples([items[str(r.image_path)] for r in records])


def _versions() -> dict[str, str]:
    out = {}
    for name in ("defectfm", "torch", "lightning", "litserve", "onnxruntime"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def option_targets(class_path: str) -> dict[str, str]:
    """Per-request option -> the model's constructor argument it sets (first candidate the model has)."""
    has = set(arguments_of(class_path))
    found = {o: next((c for c in cands if c in has), None) for o, cands in MODEL_OPTIONS.items()}
    return {o: t for o, t in found.items() if t is not None}


class CheckpointModel:
    """A checkpoint's LightningModule, rebuilt from the config it carries, predicting lists of files.

    Args:
        ckpt_path: A checkpoint written by ``lightning fit``.
        given: Settings typed on the command line (``defect_types``, ``object_names``, ``image_threshold``,
            ``pixel_threshold``; ``image_size``): they win over the checkpoint's.
        device: Where the model runs.

    Raises:
        UsageError: An unreadable checkpoint, one without a model config, or a setting the model does not have.
    """

    def __init__(self, ckpt_path: str | Path, given: Mapping[str, Any] | None = None, device: str = "cpu") -> None:
        given = {k: v for k, v in dict(given or {}).items() if v is not None}
        ckpt = read_checkpoint(ckpt_path)
        config = model_config(ckpt)
        if config is None:
            raise UsageError(f"--ckpt_path {ckpt_path}: the checkpoint records no model config; it cannot be served")
        self.ckpt_path, self.class_path = str(ckpt_path), config["class_path"]
        self.settings = dict(info(ckpt).get("data") or {})
        if given.get("image_size"):
            self.settings["image_size"] = given.pop("image_size")
        if self.settings.get("image_size") is None:
            raise UsageError(f"--ckpt_path {ckpt_path}: the checkpoint records no image size; give --image_size")
        self.targets = option_targets(self.class_path)
        missing = [k for k in given if k not in self.targets and k != "object_names"]
        if missing:
            raise UsageError(f"--{missing[0]}: the checkpoint's model ({self.class_path}) has no such setting")
        init_args = {self.targets.get(k, k): v for k, v in given.items()}
        self.device = torch.device(device)
        # seeded as the CLI seeds before it builds the model (PL_GLOBAL_SEED, else 0): weights a checkpoint does
        # not carry (frozen encoders of the tiny presets are random) are then those of defectfm predict
        L.seed_everything(None, workers=True, verbose=False)
        self.module = load_module(ckpt_path, init_args).eval().to(self.device)
        self.objects = list(given.get("object_names") or vocabulary(ckpt).get("object_names") or [])
        self._defaults = {t: getattr(self.module, t, None) for t in self.targets.values()}
        self._current = "{}"

    # ------------------------------------------------------------------ per-request settings
    def _use(self, overrides: Mapping[str, Any]) -> None:
        """Sets the module's settings to the defaults plus ``overrides`` (the vocabulary's text embeddings are
        computed again only when it changes)."""
        key = json.dumps(overrides, sort_keys=True)
        if key == self._current:
            return
        unknown = [k for k in overrides if k not in self.targets]
        if unknown:
            raise BadRequest(400, f"{unknown[0]}: the served model ({self.class_path}) has no such setting")
        values = {**self._defaults, **{self.targets[k]: v for k, v in overrides.items()}}
        vocab = {self.targets.get(o) for o in VOCABULARY_OPTIONS} - {None}
        changed = any(values[t] != getattr(self.module, t, None) for t in vocab)
        for t, v in values.items():
            setattr(self.module, t, v)
        self._current = key
        if changed:
            try:
                self.module.setup("predict")  # what predict does with the settings given: vocabulary, embeddings
            except (ValueError, KeyError) as e:
                self._current = "?"
                self._use({})
                raise BadRequest(400, f"defect_types: {str(e).splitlines()[0]}") from None

    def object_of(self, given: str | None) -> str:
        """The object name of a request's image (its own, else the model's only object, else ``"object"``)."""
        if given:
            per_object = getattr(getattr(self.module, "model", None), "per_object_prompts", False)
            if per_object and len(self.objects) > 1 and given not in self.objects:
                raise BadRequest(400, f"object {given!r} is not one of the model's objects {self.objects}")
            return given
        return self.objects[0] if len(self.objects) == 1 else "object"

    @torch.inference_mode()
    def predict(self, files: Sequence[tuple[Path, str]], overrides: Mapping[str, Any]) -> list[ImagePrediction]:
        """Predictions of ``files`` (``(path, object)``) under the request settings ``overrides``."""
        self._use(overrides)
        batch = load_batch(files, self.settings).to(self.device)
        return self.module.predict_step(batch, 0)

    # ------------------------------------------------------------------ description
    def vocabulary(self) -> dict[str, list[str]]:
        """Class names the model predicts now (default settings)."""
        self._use({})
        names = getattr(self.module, "names", None)
        if isinstance(names, Mapping) and "predict" in names:
            return {"defect_types": list(names["predict"])}
        model = getattr(self.module, "model", None)
        return {"defect_types": list(getattr(model, "defect_types", []) or []),
                "object_names": list(getattr(model, "object_names", []) or self.objects)}

    def thresholds(self) -> dict[str, Any]:
        """The decision thresholds predict uses now (calibrated or given)."""
        if hasattr(self.module, "decision_thresholds"):
            return dict(self.module.decision_thresholds())
        return {"pixel_threshold": getattr(self.module, "pixel_threshold", None)}

    def describe(self) -> dict[str, Any]:
        """``GET /info``'s model part."""
        size = self.settings.get("image_size")
        return {"model": self.class_path, "checkpoint": self.ckpt_path, "vocabulary": self.vocabulary(),
                "thresholds": self.thresholds(),
                "input": {"image_size": size, "resize": self.settings.get("resize", "stretch"),
                          "normalisation": self.settings.get("normalisation")},
                "per_request": ["object", *(k for k in self.targets if k in OVERRIDES)], "versions": _versions()}


class OnnxModel:
    """An exported CLIP-MDC file (``defectfm export``), predicting as ``defectfm onnx-predict`` does.

    Args:
        onnx_path: The ``.onnx`` file.
        given: ``image_threshold`` / ``pixel_threshold`` typed on the command line (win over the stored ones).
        settings: Data settings of the checkpoint it was exported from, if given (``resize``...).
    """

    def __init__(self, onnx_path: str | Path, given: Mapping[str, Any] | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.export = importlib.import_module("clipmdc.export")  # a model package: imported only when used
        self.predictor = self.export.OnnxPredictor(onnx_path)
        self.onnx_path = str(onnx_path)
        self.settings = {**dict(settings or {}), "image_size": list(self.predictor.image_size)}
        given = {k: v for k, v in dict(given or {}).items() if v is not None}
        if "defect_types" in given or "object_names" in given:
            raise UsageError("--defect_types/--object_names: the vocabulary is baked into the ONNX file at export; "
                             "serve the checkpoint to change it")
        self.base = self._resolved(self.predictor.thresholds, given)
        self.objects = list(self.predictor.object_names)

    @staticmethod
    def _resolved(stored: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(stored)
        for key, mode in (("image_threshold", "threshold_mode"), ("pixel_threshold", "pixel_threshold_mode")):
            if given.get(key) is not None:  # what the user gives wins, as in onnx-predict
                out[key], out[mode] = float(given[key]), "given"
        return out

    def object_of(self, given: str | None) -> str:
        return given or self.predictor.object_name

    def predict(self, files: Sequence[tuple[Path, str]], overrides: Mapping[str, Any]) -> list[ImagePrediction]:
        if "defect_types" in overrides:
            raise BadRequest(400, "defect_types: the vocabulary is baked into the served ONNX file; it cannot "
                                  "change per request (serve the checkpoint instead)")
        batch = load_batch(files, self.settings)
        return self.export._onnx_explain(self.predictor, batch, self._resolved(self.base, overrides))

    def describe(self) -> dict[str, Any]:
        p = self.predictor
        return {"model": "clipmdc ONNX export", "onnx": self.onnx_path,
                "vocabulary": {"defect_types": list(p.defect_types), "object_names": list(p.object_names)},
                "thresholds": dict(self.base),
                "input": {"image_size": list(p.image_size), "resize": self.settings.get("resize", "stretch"),
                          "normalisation": self.settings.get("normalisation")},
                "per_request": ["object", "image_threshold", "pixel_threshold"], "versions": _versions()}


def build_model(ckpt_path: str | None, onnx_path: str | None, given: Mapping[str, Any],
                device: str = "cpu") -> CheckpointModel | OnnxModel:
    """The served model: the ONNX file when given (the checkpoint then only names the data settings), else the
    checkpoint."""
    if onnx_path:
        settings = dict(info(read_checkpoint(ckpt_path)).get("data") or {}) if ckpt_path else {}
        return OnnxModel(onnx_path, given, settings)
    if not ckpt_path:
        raise UsageError("defectfm serve: give --ckpt_path (and/or --onnx)")
    return CheckpointModel(ckpt_path, given, device)
