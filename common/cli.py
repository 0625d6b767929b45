"""The one command-line entry point: ``lightning`` and ``defectfm`` console scripts.

``lightning fit|validate|test|predict --config EXPERIMENT.yaml [--config configs/trainer/X.yaml] [--key value]``
is a :class:`DefectCLI` (a LightningCLI in subclass mode: model and data are chosen by ``class_path`` in the
YAML). ``defectfm`` is the same command with project tools added as extra sub-commands, e.g.
``defectfm demo-data --out data/demo``.

Bad input data ends with one line naming the file and the problem (exit code 2), not a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from common.cli_null import patch_nested_null
from common.data.errors import DataError

patch_nested_null()


class DefectCLI(LightningCLI):
    """LightningCLI with defectfm's defaults: subclass mode for model and data, stackable ``--config``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Hook for project-wide arguments (none yet: models take the data vocabulary in ``setup``)."""


def _demo_data(argv: Sequence[str]) -> None:
    from common.data.demo import main as demo_main

    demo_main(argv)


def _lazy(module: str, function: str) -> Callable[[Sequence[str]], None]:
    """A command implemented in a model package, imported only when it runs (``common`` never imports it
    at module level, so the data layer stays independent of the model families)."""

    def run(argv: Sequence[str]) -> None:
        import importlib

        getattr(importlib.import_module(module), function)(argv)

    return run


EXTRA_COMMANDS: dict[str, tuple[Callable[[Sequence[str]], None], str]] = {
    "demo-data": (_demo_data, "write the generated demo dataset (MVTec layout)"),
    "export": (_lazy("clipmdc.export", "export_main"), "export a trained CLIP-MDC checkpoint to ONNX/TorchScript"),
    "onnx-predict": (_lazy("clipmdc.export", "onnx_predict_main"), "predict image files/folders with an ONNX file"),
    "captions": (_lazy("diffdefect.captions", "main"), "build an image-text manifest with templated captions"),
    "precompute": (_lazy("diffdefect.precompute", "main"), "encode images/captions once into latent shards"),
    "sample": (_lazy("diffdefect.sampling", "main"), "generate images from text with a stage-1 checkpoint"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] in EXTRA_COMMANDS:
        EXTRA_COMMANDS[argv[0]][0](argv[1:])
        return 0
    if argv and argv[0] in ("-h", "--help"):
        extra = "\n".join(f"  {k:<12} {v[1]}" for k, v in EXTRA_COMMANDS.items())
        print(f"defectfm tools (besides fit/validate/test/predict below):\n{extra}\n")
    try:
        DefectCLI(args=None if from_sys else argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
