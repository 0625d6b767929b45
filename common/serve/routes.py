"""The server's own routes besides ``POST /predict``: ``GET /info`` and the review page.

* ``GET /info``: the model (class or ONNX file), vocabulary, thresholds, input size and resize mode,
  per-request settings, versions and the server's batching settings (503 until the worker has loaded the model);
* ``GET /review``: the review page (plain HTML + a little JS, :file:`review.html`);
* ``GET /review/items``: the items as JSON (``{"items": [...], "types": [...], "labels_csv": ...}``);
* ``GET /review/overlay/{key}``: an item's overlay PNG;
* ``POST /review/label`` ``{"key", "verdict": "correct"|"wrong", "defect_type"}``: writes the verdict to the
  labels CSV and returns the row (400 with a one-line reason for a bad one, 404 for an unknown key).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from common.serve.review import ReviewStore


def page() -> str:
    """The review page's HTML."""
    return resources.files("common.serve").joinpath("review.html").read_text()


def add_routes(app: FastAPI, info_file: Path, store: ReviewStore, server: dict[str, Any]) -> None:
    """Adds ``/info`` and the review routes to ``app``.

    Args:
        app: LitServe's FastAPI app.
        info_file: The ``info.json`` the worker writes once the model is loaded.
        store: The review items and labels CSV.
        server: Settings of the server process shown by ``/info`` (port, review sources, limits).
    """

    @app.get("/info")
    async def info() -> JSONResponse:
        if not info_file.is_file():
            return JSONResponse({"error": "the model is still loading; try again shortly"}, status_code=503)
        described = json.loads(info_file.read_text())
        described["server"] = {**described.get("server", {}), **server}
        return JSONResponse(described)

    @app.get("/review")
    async def review() -> HTMLResponse:
        return HTMLResponse(page())

    @app.get("/review/items")
    async def items() -> JSONResponse:
        return JSONResponse({"items": store.items(), "types": store.types(), "labels_csv": str(store.labels_csv),
                             "sources": [str(s) for s in store.sources]})

    @app.get("/review/overlay/{key}", response_model=None)
    async def overlay(key: str) -> FileResponse | JSONResponse:
        path = store.overlay(key)
        if path is None or not path.is_file():
            return JSONResponse({"error": f"no overlay for key {key!r}"}, status_code=404)
        return FileResponse(path, media_type="image/png")

    @app.post("/review/label")
    async def label(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object {key, verdict, defect_type}")
            row = store.mark(str(body.get("key", "")), str(body.get("verdict", "")), body.get("defect_type"))
        except KeyError as e:
            return JSONResponse({"error": str(e.args[0])}, status_code=404)
        except ValueError as e:
            return JSONResponse({"error": str(e).splitlines()[0]}, status_code=400)
        return JSONResponse(row)
