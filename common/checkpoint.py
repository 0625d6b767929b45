"""Self-contained checkpoints: what a checkpoint carries besides the weights, and the checks on loading one.

Every checkpoint written through the CLI carries, under ``checkpoint["defectfm"]``:

* ``model``: the resolved model config (``class_path`` + ``init_args``, nested classes included), enough to
  rebuild the LightningModule with no experiment YAML;
* ``data``: what predicting needs to feed the model as in training: ``image_size``, ``resize`` (``"stretch"``,
  ``"letterbox"`` or ``"tile"``, :mod:`common.data.tiling`), ``tile_overlap`` and ``tile_scale``, and
  ``normalisation`` (RGB in [0, 1]; each frozen encoder normalises for itself);
* ``vocabulary``: written by the model (``defect_types``, and ``object_names`` for CLIP-MDC).

Thresholds travel in the ``state_dict`` (buffers of the module). :class:`~common.cli.DefectCLI` reads ``model``
as *defaults*: what the config files and the command line give wins, the checkpoint fills the rest.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from common.cli_errors import UsageError
from common.data.vocabulary import join_vocabulary

KEY = "defectfm"
FORMAT = 1
NORMALISATION = {"range": [0.0, 1.0], "channels": "RGB",
                 "note": "images are fed in [0, 1]; each frozen encoder applies its own mean/std"}
LIGHTNING_NAMES = ("last", "best", "hpc", "registry")
"""``--ckpt_path`` values Lightning resolves itself (not files)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint file on the CPU (tensors and plain data only, as Lightning reads hyperparameters).

    Raises:
        UsageError: The file is missing, a folder, or not a checkpoint (one line naming it).
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--ckpt_path {path}: file not found")
    if path.is_dir():
        raise UsageError(f"--ckpt_path {path} is a folder (a sharded checkpoint); give a single .ckpt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--ckpt_path {path}: not a readable checkpoint ({first})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(f"--ckpt_path {path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def info(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """``checkpoint["defectfm"]`` (empty for checkpoints written before it existed)."""
    return dict(ckpt.get(KEY) or {})


def model_config(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's model config as ``{"class_path", "init_args"}``: the resolved config it was trained with
    when it has one, else Lightning's saved hyperparameters (``None`` when it has neither)."""
    saved = info(ckpt).get("model")
    if saved and saved.get("class_path"):
        return copy.deepcopy(saved)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    if not class_path:
        return None
    return {"class_path": class_path, "init_args": hparams}


def load_module(path: str | Path, init_args: Mapping[str, Any] | None = None) -> L.LightningModule:
    """The LightningModule of a checkpoint, rebuilt from the model config it carries, with its weights and its
    vocabulary (no experiment YAML, no data). For tools outside ``lightning predict`` (export, notebooks).

    Args:
        path: A checkpoint written through the CLI.
        init_args: Constructor arguments that win over the checkpoint's, e.g. ``{"defect_types": [...]}``.

    Raises:
        UsageError: The file is missing or not a checkpoint, records no model config, or its weights do not fit.
    """
    from jsonargparse import ArgumentParser

    ckpt = read_checkpoint(path)
    config = model_config(ckpt)
    if config is None:
        raise UsageError(f"--ckpt_path {path}: the checkpoint records no model config (written before defectfm "
                         "kept one); build the model from its experiment YAML instead")
    config["init_args"] = {**(config.get("init_args") or {}), **dict(init_args or {})}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model", fail_untyped=False)
    module = parser.instantiate_classes(parser.parse_object({"model": config})).model
    module.on_load_checkpoint(ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=module.strict_loading)
    except RuntimeError as e:
        err = load_error(str(e), ckpt, path, config)
        if err is None:
            raise
        raise err from e
    return module


def vocabulary(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The vocabulary the checkpoint's model used (``defect_types``, ``object_names`` lists and the
    ``descriptions`` mapping of described names); empty when unknown."""
    vocab = info(ckpt).get("vocabulary") or ckpt.get("clipmdc_vocabulary") or {}  # the latter: older checkpoints
    return {k: dict(v) if isinstance(v, Mapping) else list(v) for k, v in vocab.items() if v}


def vocabulary_entries(ckpt: Mapping[str, Any]) -> list[str] | None:
    """The checkpoint's defect types as vocabulary entries (``"name: description"`` for described names,
    :func:`common.data.vocabulary.join_vocabulary`); ``None`` when it records none."""
    vocab = vocabulary(ckpt)
    names = vocab.get("defect_types")
    return join_vocabulary(names, vocab.get("descriptions")) if names else None


def data_settings(datamodule: Any) -> dict[str, Any]:
    """What a DataModule did to the pixels, for predicting without it: image size, resize mode, normalisation."""
    settings = getattr(datamodule, "settings", None)  # DefectDataModule: size, resize mode, tiling
    if isinstance(settings, dict):
        return {**settings, "normalisation": dict(NORMALISATION)}
    size = getattr(datamodule, "image_size", None)
    return {"image_size": list(size) if isinstance(size, (list, tuple)) else size, "resize": "stretch",
            "normalisation": dict(NORMALISATION)}


class CheckpointInfo(L.Callback):
    """Writes ``checkpoint["defectfm"]`` (model config, data settings) into every checkpoint. Added to every
    trainer by :class:`~common.cli.DefectCLI`; the model adds its vocabulary in its own ``on_save_checkpoint``.

    Args:
        model: The resolved model config (``class_path`` + ``init_args``).
    """

    def __init__(self, model: Mapping[str, Any] | None) -> None:
        self.model = copy.deepcopy(dict(model)) if model else None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        entry = checkpoint.setdefault(KEY, {})
        entry["format"] = FORMAT
        if self.model is not None:
            entry["model"] = copy.deepcopy(self.model)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "image_size", None) is not None:
            entry["data"] = data_settings(datamodule)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, Mapping):
        out: dict[str, Any] = {}
        for k, v in config.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: config}


def config_differences(saved: Mapping[str, Any] | None, given: Mapping[str, Any] | None, limit: int = 3) -> str:
    """``"key (checkpoint a, now b), ..."`` for the model settings both configs give and differ in, the network's
    first (what changes tensor shapes), optimisation left out; ``""`` when none or unknown."""
    if not saved or not given:
        return ""
    a, b = _flatten(saved), _flatten(given)
    keys = [k for k in a if k in b and a[k] != b[k] and not k.startswith(("init_args.optimizer", "init_args.scheduler"))]
    keys.sort(key=lambda k: (not k.startswith("init_args.model."), not k.endswith("class_path")))  # stable
    shown = [f"model.{k} (checkpoint {a.get(k)!r}, now {b.get(k)!r})" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_class(module: torch.nn.Module, ckpt: Mapping[str, Any], path: str | Path) -> None:
    """Raises a one-line :class:`UsageError` when ``ckpt`` holds another LightningModule class than ``module``."""
    saved = (model_config(ckpt) or {}).get("class_path")
    if saved and saved.rsplit(".", 1)[-1] != type(module).__qualname__:
        own = f"{type(module).__module__}.{type(module).__qualname__}"
        raise UsageError(f"--ckpt_path {path} holds a {saved} model, but the config builds a {own}; use the config "
                         "it was trained with, or none (defectfm predict needs only the checkpoint)")


_SIZE = re.compile(r"size mismatch for ([\w.]+): copying a param with shape torch.Size\(\[([\d, ]*)\]\) from "
                   r"checkpoint, the shape in current model is torch.Size\(\[([\d, ]*)\]\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: ((?:\"[^\"]+\"(?:, )?)+)")


def load_error(message: str, ckpt: Mapping[str, Any], path: str | Path, given: Mapping[str, Any] | None = None,
               vocabulary_now: list[str] | None = None) -> UsageError | None:
    """Turns PyTorch's ``Error(s) in loading state_dict`` message into one line saying which weights do not fit
    and which settings differ from the checkpoint's; ``None`` for any other message.

    Args:
        message: The ``RuntimeError`` text.
        ckpt: The checkpoint.
        path: Its path (for the message).
        given: The model config the module was built from (to name the settings that differ).
        vocabulary_now: The model's defect types (to say when a shape is the vocabulary's size).
    """
    if "Error(s) in loading state_dict" not in message:
        return None
    problems = []
    sizes = _SIZE.findall(message)
    if sizes:
        key, was, now = sizes[0]
        problems.append(f"{len(sizes)} weight(s) of another shape, e.g. {key} is [{was}] in the checkpoint and "
                        f"[{now}] in the model")
    for kind, keys in _KEYS.findall(message):
        names = re.findall(r'"([^"]+)"', keys)
        what = "missing from the checkpoint" if kind == "Missing" else "that the model does not have"
        problems.append(f"{len(names)} weight(s) {what}, e.g. {names[0]}")
    saved_types = vocabulary(ckpt).get("defect_types")
    if saved_types and vocabulary_now and len(saved_types) != len(vocabulary_now):
        dims = {int(d) for _, was, now in sizes for d in f"{was},{now}".split(",") if d.strip()}
        if {len(saved_types), len(vocabulary_now)} & dims:
            problems.append(f"the checkpoint has {len(saved_types)} defect types ({', '.join(saved_types)}), "
                            f"the model {len(vocabulary_now)}")
    diff = config_differences(model_config(ckpt), given)
    why = f"; settings that differ: {diff}" if diff else ""
    return UsageError(f"--ckpt_path {path} does not fit the model built from the config "
                      f"({'; '.join(problems) or 'its weights do not load'}){why}")
