"""The LitServe API of ``defectfm serve``: decode one request, predict a dynamic batch, encode one response.

LitServe collects up to ``max_batch_size`` requests (waiting at most ``batch_timeout`` seconds) and calls
:meth:`DefectAPI.predict` once for them in the worker process. A bad request never fails its batch: decoding
returns a :class:`~common.serve.inputs.BadRequest` in its place, which is answered alone with its 4xx and
one-line reason while the others are predicted. Requests with their own settings (vocabulary, thresholds) are
predicted in groups of equal settings, in one model call per group.

A response is the JSON line ``defectfm predict`` writes for the image (``path`` of the stored image, decision,
type, probabilities, score, threshold, regions, explanation, ``overlay``/``map`` relative to the record part),
plus ``id`` and ``filename`` from the request, ``part`` (the record folder the relative paths are in) and, when
asked, ``overlay_png`` (base64).
"""

from __future__ import annotations

import base64
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi.responses import JSONResponse

from common.serve.backend import build_model
from common.serve.inputs import BadRequest, ImageRequest, parse_request
from common.serve.recorder import RequestRecorder

INFO_FILE = "info.json"
"""Written into the record folder by the worker once the model is loaded (``GET /info`` reads it)."""


class DefectAPI(ls.LitAPI):
    """``POST /predict`` of a checkpoint or ONNX model.

    Args:
        ckpt_path: The checkpoint (CLIP-MDC or stage 2).
        onnx_path: An exported ONNX file to run instead of the checkpoint's network.
        given: Settings typed on the command line (vocabulary, thresholds, image size): they win over the
            checkpoint's.
        record_dir: Folder of the request record (:class:`~common.serve.recorder.RequestRecorder`).
        max_pixels: Largest image accepted (width x height; 413 beyond).
        max_batch_size: Most requests per model call.
        batch_timeout: Longest wait for a batch to fill, in seconds.
        part_size: Requests per record part.
        keep_parts: Record parts kept.
        device: ``"cpu"`` or ``"cuda"`` (LitServe's device is used when ``None``).
        record: Keep each request's image, overlay, map and JSON line (the review of recent requests needs them);
            ``False`` answers with the JSON record only (no ``overlay``/``map`` files, images deleted after).
    """

    def __init__(self, ckpt_path: str | None, onnx_path: str | None = None, given: dict[str, Any] | None = None,
                 record_dir: str = "runs/serve", max_pixels: int = 40_000_000, max_batch_size: int = 8,
                 batch_timeout: float = 0.01, part_size: int = 500, keep_parts: int = 4,
                 device: str | None = None, record: bool = True) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.ckpt_path, self.onnx_path, self.given = ckpt_path, onnx_path, dict(given or {})
        self.record_dir, self.max_pixels = record_dir, max_pixels
        self.part_size, self.keep_parts, self.device, self.record = part_size, keep_parts, device, record

    def setup(self, device: str) -> None:
        """Loads the model and opens the record; writes ``info.json`` for ``GET /info``."""
        self.model = build_model(self.ckpt_path, self.onnx_path, self.given, self.device or device)
        self.recorder = RequestRecorder(self.record_dir, self.part_size, self.keep_parts)
        described = {**self.model.describe(), "server": {"max_batch_size": self.max_batch_size,
                                                         "batch_timeout": self.batch_timeout,
                                                         "max_pixels": self.max_pixels, "record_dir": self.record_dir,
                                                         "record": self.record}}
        path = Path(self.record_dir) / INFO_FILE
        path.with_suffix(".tmp").write_text(json.dumps(described, indent=1, default=str))
        os.replace(path.with_suffix(".tmp"), path)

    def decode_request(self, request):  # noqa: ANN001, ANN201 - unannotated: LitServe passes the parsed body
        try:
            return parse_request(dict(request), self.max_pixels)
        except BadRequest as e:
            return e

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    def predict(self, x: Any) -> Any:
        """Predicts a batch (a list; a single request when ``max_batch_size`` is 1)."""
        single = not isinstance(x, list)
        items = [x] if single else x
        out: list[Any] = list(items)  # BadRequests stay in place
        groups: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            if isinstance(item, ImageRequest):
                groups[json.dumps(item.overrides, sort_keys=True)].append(i)
        for indices in groups.values():
            self._predict_group(items, indices, out)
        return out[0] if single else out

    def _predict_group(self, items: list[Any], indices: list[int], out: list[Any]) -> None:
        requests: list[ImageRequest] = [items[i] for i in indices]
        files = []
        try:
            if not self.record and any(r.overlay for r in requests):
                raise BadRequest(400, "overlay: this server runs with --no_record (no overlays are drawn)")
            files = [(self.recorder.store(r), self.model.object_of(r.object)) for r in requests]
            preds = self.model.predict(files, requests[0].overrides)
        except BadRequest as e:
            for i in indices:
                out[i] = e
            return
        finally:
            if not self.record:
                for path, _ in files:
                    path.unlink(missing_ok=True)
        if self.record:
            rows = self.recorder.write(preds)
        else:  # the JSON line without its files
            rows = {str(p.path): {"path": p.path, **p.record} for p in preds if p.error is None}
        for i, r, (path, _), pred in zip(indices, requests, files, preds, strict=True):
            if pred.error is not None:
                out[i] = BadRequest(400, pred.error)
                continue
            row = {"id": r.id, "filename": r.filename, **rows[str(path)], "part": self.recorder.part_dir.name}
            if r.overlay:
                row["overlay_png"] = base64.b64encode((self.recorder.part_dir / row["overlay"]).read_bytes()).decode()
            out[i] = json.loads(json.dumps(row, default=float))  # numpy numbers as the JSON line has them

    def encode_response(self, output: Any) -> Any:
        if isinstance(output, BadRequest):
            return JSONResponse({"error": output.reason}, status_code=output.status)
        return output
