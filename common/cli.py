"""The one command-line entry point: ``lightning`` and ``defectfm`` console scripts.

``lightning fit|validate|test|predict --config EXPERIMENT.yaml [--config configs/trainer/X.yaml] [--key value]``
is a :class:`DefectCLI` (a LightningCLI in subclass mode: model and data are chosen by ``class_path`` in the
YAML). ``defectfm`` is the same command with project tools added as extra sub-commands, e.g.
``defectfm demo-data --out data/demo``.

Bad input data ends with one line naming the file and the problem (exit code 2), not a traceback. A prediction
run that could not read some files still predicts all the others, lists the failures in ``errors.csv`` and exits
with code 3 (:data:`common.prediction.EXIT_SOME_FAILED`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from common.checkpoint import (
    LIGHTNING_NAMES,
    CheckpointInfo,
    check_class,
    load_error,
    model_config,
    read_checkpoint,
)
from common.cli_errors import DefectArgumentParser, UsageError, squeezed
from common.cli_links import patch_function_links
from common.cli_null import patch_nested_null
from common.data.errors import DataError

patch_nested_null()
patch_function_links()


def _scan_ckpt_path(args: Sequence[str], subcommands: Sequence[str]) -> tuple[str | None, str | None]:
    """``(subcommand, --ckpt_path value)`` as typed on the command line (the last one wins)."""
    args = [str(a) for a in args]
    sub = next((i for i, a in enumerate(args) if a in subcommands), None)
    if sub is None:
        return None, None
    path = None
    for i, a in enumerate(args[sub + 1 :], start=sub + 1):
        if a == "--ckpt_path" and i + 1 < len(args):
            path = args[i + 1]
        elif a.startswith("--ckpt_path="):
            path = a.split("=", 1)[1]
    return args[sub], path


def _data_names(datamodule: object, attribute: str) -> list[str] | None:
    """The DataModule's ``attribute`` names (``None`` when it has none)."""
    try:
        names = getattr(datamodule, attribute, None)
    except DataError:  # bad data: the DataModule reports it in one line when it sets up, before the model does
        return None
    return list(names) if names else None


def _data_vocabulary(datamodule: object) -> list[str] | None:
    """The DataModule's class names for ``model.init_args.data_vocabulary`` (``None`` when it has none)."""
    return _data_names(datamodule, "vocabulary")


def _data_object_names(datamodule: object) -> list[str] | None:
    """The DataModule's object names for ``model.init_args.data_object_names`` (``None`` when it has none)."""
    return _data_names(datamodule, "object_names")


class DefectCLI(LightningCLI):
    """LightningCLI with defectfm's defaults: subclass mode for model and data, stackable ``--config``, and:

    * **what the command line says wins**: with ``--ckpt_path``, the checkpoint's model config (the resolved
      config it was trained with, :mod:`common.checkpoint`, else Lightning's saved hyperparameters) only fills
      what the config files and the command line do not give. (Lightning's own ``_parse_ckpt_path`` applies the
      checkpoint's hyperparameters *over* the parsed config, so e.g. ``--model.init_args.defect_types`` or a
      threshold given at predict time were silently lost.) ``lightning predict --ckpt_path X --data ...`` thus
      needs no experiment YAML;
    * every checkpoint carries its model config and data settings (:class:`~common.checkpoint.CheckpointInfo`);
    * the DataModule's class names reach models that take ``data_vocabulary`` by ``link_arguments``;
    * one-line errors (:class:`~common.cli_errors.UsageError`): a misspelt key with the closest valid one, a
      missing checkpoint, a checkpoint of another model or with weights of other shapes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", DefectArgumentParser)
        self._raw_args: Any = None
        self._ckpt_path: str | None = None
        self._ckpt: dict[str, Any] | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Links the DataModule's class and object names to models that take them (``data_vocabulary``,
        ``data_object_names``; skipped for the others, and ``None`` for data modules without them)."""
        parser.link_arguments("data", "model.init_args.data_vocabulary", compute_fn=_data_vocabulary,
                              apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.data_object_names", compute_fn=_data_object_names,
                              apply_on="instantiate")

    # ------------------------------------------------------------------ checkpoint values as defaults
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parses with the checkpoint's model config as the model's defaults when ``--ckpt_path`` is typed."""
        self._raw_args = args
        if not isinstance(args, (dict, Namespace)):
            sub, ckpt_path = _scan_ckpt_path(sys.argv[1:] if args is None else args, list(self.subcommands()))
            if sub and ckpt_path:
                self._checkpoint_defaults(sub, ckpt_path)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Replaces Lightning's (which parses the checkpoint's hyperparameters over the config): a ``ckpt_path``
        not typed on the command line (e.g. in a config file) sets the defaults now, and the arguments are
        parsed again over them."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and str(ckpt_path) != self._ckpt_path and self._checkpoint_defaults(sub, str(ckpt_path)):
            super().parse_arguments(self.parser, self._raw_args)

    def _checkpoint_defaults(self, subcommand: str, ckpt_path: str) -> bool:
        """Reads ``ckpt_path`` (one-line errors) and makes its model config the defaults of ``--model``."""
        self._ckpt_path = ckpt_path
        path = Path(ckpt_path)
        if (ckpt_path in LIGHTNING_NAMES and not path.exists()) or path.is_dir():
            return False  # "last"/"best" and sharded checkpoint folders: Lightning resolves and loads them itself
        self._ckpt = read_checkpoint(path)
        model = model_config(self._ckpt)
        if model is None:
            return False
        self._parser(subcommand).set_defaults({"model": model})
        return True

    # ------------------------------------------------------------------ checkpoint info, load errors
    def instantiate_classes(self) -> None:
        """Lightning's, with a constructor's complaint (e.g. ``regime must be one of ...``), which jsonargparse
        wraps into a listing of union types, reduced to one line."""
        try:
            super().instantiate_classes()
        except ValueError as e:
            if isinstance(e, DataError) or "Does not validate against any of the Union subtypes" not in str(e):
                raise
            raise UsageError(squeezed(str(e))) from e

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        if config.get("fast_dev_run"):
            # fast_dev_run is documented to save no checkpoint, yet Lightning 2.x's ModelCheckpoint(save_last=True)
            # still writes last.ckpt when training ends: the experiment's checkpoint callbacks are left out
            given = config.get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            config["callbacks"] = [cb for cb in given if not isinstance(cb, ModelCheckpoint)]
        self._dump_config()
        model = self.config_dump.get("model") if isinstance(self.config_dump, dict) else None
        return super()._instantiate_trainer(config, [*callbacks, CheckpointInfo(model)])

    def _run_subcommand(self, subcommand: str) -> None:
        if self._ckpt is not None:
            check_class(self.model, self._ckpt, self._ckpt_path)
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as e:
            if self._ckpt is None:
                raise
            given = self.config_dump.get("model") if isinstance(getattr(self, "config_dump", None), dict) else None
            vocab = getattr(getattr(self.model, "model", None), "defect_types", None)
            err = load_error(str(e), self._ckpt, self._ckpt_path, given, list(vocab) if vocab else None)
            if err is None:
                raise
            raise err from e

    def before_predict(self) -> None:
        """Says so when predict serves the test split of the training reader (no ``predict_reader``): pointing
        ``reader.root`` at a new folder predicts a seeded subset of it, not every image."""
        dm = self.datamodule
        if dm is None or getattr(dm, "predict_reader", "absent") is not None or not hasattr(dm, "split_records"):
            return
        splits = dm.split_records()
        total = sum(len(v) for v in splits.values())
        root = getattr(getattr(dm, "reader", None), "root", "the data")
        print(f"note: predicting the test split of {root} ({len(splits['test'])} of {total} images), as no "
              "--data.init_args.predict_reader is given; to predict every image of a folder: defectfm predict "
              "--ckpt_path CKPT --input FOLDER --out DIR", file=sys.stderr)


def _demo_data(argv: Sequence[str]) -> None:
    from common.data.demo import main as demo_main

    demo_main(argv)


def _lazy(module: str, function: str) -> Callable[[Sequence[str]], int | None]:
    """A command implemented in a model package, imported only when it runs (``common`` never imports it
    at module level, so the data layer stays independent of the model families)."""

    def run(argv: Sequence[str]) -> int | None:
        import importlib

        return getattr(importlib.import_module(module), function)(argv)

    return run


EXTRA_COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int | None], str]] = {
    "demo-data": (_demo_data, "write the generated demo dataset (MVTec layout)"),
    "export": (_lazy("clipmdc.export", "export_main"), "export a trained CLIP-MDC checkpoint to ONNX/TorchScript"),
    "onnx-predict": (_lazy("clipmdc.export", "onnx_predict_main"), "predict image files/folders with an ONNX file"),
    "captions": (_lazy("diffdefect.stage1.captions", "main"), "build an image-text manifest with templated captions"),
    "corpus": (_lazy("common.data.corpus", "main"), "consolidate reader configs into one multi-domain corpus"),
    "newline": (_lazy("clipmdc.newline", "newline_main"), "a new product line from good images on a CLIP-MDC "
                "checkpoint: its memory and thresholds, no gradient step"),
    "precompute": (_lazy("diffdefect.stage1.precompute", "main"), "encode images/captions once into latent shards"),
    "sample": (_lazy("diffdefect.stage1.sampling", "main"), "generate images from text with a stage-1 checkpoint"),
    "serve": (_lazy("common.serve.server", "serve_main"), "serve a checkpoint over HTTP (batched) with a review page"),
}


def run_cli(args: Sequence[str] | None) -> int:
    """Runs :class:`DefectCLI` on ``args`` (``None``: ``sys.argv``); returns the exit code (``EXIT_SOME_FAILED``
    when a prediction run could not read some of its images)."""
    from common.prediction import EXIT_SOME_FAILED, failed_predictions

    cli = DefectCLI(args=None if args is None else list(args))
    return EXIT_SOME_FAILED if failed_predictions(cli.trainer) else 0


def _is_folder_predict(argv: Sequence[str]) -> bool:
    """``predict --input ...`` is defectfm's checkpoint-only predict command; ``predict --config ...`` Lightning's."""
    return bool(argv) and argv[0] == "predict" and any(a == "--input" or a.startswith("--input=") for a in argv[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code (2 with one line on stderr for bad input)."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] in ("-h", "--help"):
        extra = "\n".join(f"  {k:<12} {v[1]}" for k, v in EXTRA_COMMANDS.items())
        print(f"defectfm tools (besides fit/validate/test/predict below):\n{extra}\n"
              "  predict --ckpt_path CKPT --input FOLDER_OR_FILES --out DIR   predict a folder with only a checkpoint\n")
    if argv[:1] == ["predict"] and any(a in ("-h", "--help") for a in argv) and "--input" not in argv:
        from common.predict import parser as folder_parser

        print(folder_parser().format_help() + "\nlightning predict (with --config, and no --input):\n")
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            return int(EXTRA_COMMANDS[argv[0]][0](argv[1:]) or 0)  # a tool may return an exit code
        if _is_folder_predict(argv):
            from common.predict import predict_main

            return predict_main(argv[1:])
        return run_cli(None if from_sys else argv)
    except (DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
