"""``defectfm serve``: a checkpoint (or its ONNX export) behind a batched HTTP server, with a review page.

::

    defectfm serve --ckpt_path runs/demo/checkpoints/last.ckpt --port 8000
    curl -F image=@data/demo/plate/test/scratch/000.png http://127.0.0.1:8000/predict

Routes: ``POST /predict`` (:mod:`common.serve.api`), ``GET /health`` (LitServe's: ``ok`` once the model is
loaded), ``GET /info`` and ``GET /review`` (:mod:`common.serve.routes`). Settings typed here win over the
checkpoint's, as for ``defectfm predict``; a request may give its own vocabulary and thresholds.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli_errors import OneLineParser, UsageError
from common.predict import _names
from common.serve.api import INFO_FILE, DefectAPI
from common.serve.backend import option_targets
from common.serve.gate import PredictGate
from common.serve.review import ReviewStore
from common.serve.routes import add_routes


def parser() -> argparse.ArgumentParser:
    """The options of ``defectfm serve``."""
    p = OneLineParser(prog="defectfm serve", description="serve a checkpoint (or its ONNX export) over HTTP with "
                "dynamic batching and an operator review page")
    p.add_argument("--ckpt_path", default=None, help="a checkpoint written by lightning fit (CLIP-MDC or stage 2)")
    p.add_argument("--onnx", default=None, help="an ONNX file written by defectfm export, run instead")
    p.add_argument("--host", default="127.0.0.1", choices=("127.0.0.1", "0.0.0.0", "::"),
                   help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max_batch_size", type=int, default=8, help="most requests per model call (1: no batching)")
    p.add_argument("--batch_timeout", type=float, default=0.01, help="longest wait for a batch to fill (seconds)")
    p.add_argument("--timeout", type=float, default=60.0, help="longest a request may wait in the queue (seconds)")
    p.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--record_dir", default="runs/serve", help="where request images and predictions are kept")
    p.add_argument("--no_record", dest="record", action="store_false", help="keep nothing of the requests: the "
                   "JSON record only, no overlay/map files, no review of recent requests (faster)")
    p.add_argument("--part_size", type=int, default=500, help="requests per record part")
    p.add_argument("--keep_parts", type=int, default=4, help="record parts kept (older ones are deleted)")
    p.add_argument("--review_dir", action="append", default=None,
                   help="a defectfm predict --out folder to review (repeatable; default: the recent requests)")
    p.add_argument("--labels_csv", default=None, help="labels CSV the review writes (default: labels.csv in the "
                   "first --review_dir, else in --record_dir)")
    p.add_argument("--max_bytes", type=int, default=20_000_000, help="largest request body (413 beyond)")
    p.add_argument("--max_pixels", type=int, default=40_000_000, help="largest image, width x height (413 beyond)")
    p.add_argument("--defect_types", default=None, help='defect-type names, e.g. "[good,scratch,dent]"')
    p.add_argument("--object_names", default=None, help='object names of the model, e.g. "[plate,fabric]"')
    p.add_argument("--image_threshold", type=float, default=None, help="image anomaly probability threshold")
    p.add_argument("--pixel_threshold", type=float, default=None, help="pixel anomaly probability threshold")
    p.add_argument("--image_size", type=int, default=None, help="input side (default: the training size)")
    p.add_argument("--log_level", default="warning")
    return p


def given_settings(a: argparse.Namespace) -> dict[str, Any]:
    """The model settings typed on the command line (those not typed are left out)."""
    given = {"defect_types": _names(a.defect_types), "object_names": _names(a.object_names),
             "image_threshold": a.image_threshold, "pixel_threshold": a.pixel_threshold, "image_size": a.image_size}
    return {k: v for k, v in given.items() if v is not None}


def check(a: argparse.Namespace) -> None:
    """Fails early, in one line, on what the worker would fail on later (files, settings, limits)."""
    if not a.ckpt_path and not a.onnx:
        raise UsageError("defectfm serve: give --ckpt_path (and/or --onnx)")
    if a.onnx and not Path(a.onnx).is_file():
        raise UsageError(f"--onnx {a.onnx}: file not found")
    if a.ckpt_path:
        from common.checkpoint import model_config, read_checkpoint

        config = model_config(read_checkpoint(a.ckpt_path))
        if config is None:
            raise UsageError(f"--ckpt_path {a.ckpt_path}: the checkpoint records no model config; it cannot be served")
        targets = option_targets(config["class_path"])
        for key in ("defect_types", "image_threshold", "pixel_threshold"):
            if getattr(a, key) is not None and key not in targets and not a.onnx:
                raise UsageError(f"--{key}: the checkpoint's model ({config['class_path']}) has no such setting")
    if a.max_batch_size < 1 or a.batch_timeout < 0 or not 1024 <= a.port <= 65535:
        raise UsageError("defectfm serve: --max_batch_size >= 1, --batch_timeout >= 0 and --port in 1024..65535")


def build_server(a: argparse.Namespace) -> Any:
    """The LitServer of the parsed options (not started)."""
    import litserve as ls

    api = DefectAPI(a.ckpt_path, a.onnx, given_settings(a), a.record_dir, a.max_pixels, a.max_batch_size,
                    a.batch_timeout, a.part_size, a.keep_parts, None if a.accelerator == "auto" else a.accelerator,
                    a.record)
    server = ls.LitServer(api, accelerator=a.accelerator, devices=1, timeout=a.timeout, info_path="/litserve/info",
                          middlewares=[(PredictGate, {"path": api.api_path, "max_bytes": a.max_bytes})])
    sources = a.review_dir or [a.record_dir]
    labels = a.labels_csv or str(Path(sources[0]) / "labels.csv")
    store = ReviewStore(sources, labels)
    add_routes(server.app, Path(a.record_dir) / INFO_FILE, store,
               {"port": a.port, "host": a.host, "review": [str(s) for s in sources], "labels_csv": labels,
                "max_bytes": a.max_bytes, "timeout": a.timeout})
    return server


def serve_main(argv: Sequence[str]) -> int:
    """``defectfm serve --ckpt_path CKPT [--onnx model.onnx] [--port 8000] [options]``; runs until stopped."""
    a = parser().parse_args(list(argv))
    check(a)
    Path(a.record_dir).mkdir(parents=True, exist_ok=True)
    (Path(a.record_dir) / INFO_FILE).unlink(missing_ok=True)  # /info answers 503 until this worker has loaded
    server = build_server(a)
    logging.getLogger("litserve").setLevel(a.log_level.upper())
    print(f"defectfm serve: http://{a.host}:{a.port}  POST /predict, GET /health, /info, /review "
          f"(batches of up to {a.max_batch_size}, {a.batch_timeout * 1000:.0f} ms wait; record in {a.record_dir})",
          flush=True)
    server.run(host=a.host, port=a.port, generate_client_file=False, num_api_servers=1, log_level=a.log_level)
    return 0
