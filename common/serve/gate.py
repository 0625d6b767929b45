"""The HTTP side of ``POST /predict``, before a request is queued for the model: size limit, body format.

:class:`PredictGate` is an ASGI middleware on the server process. It reads the body (at most ``max_bytes``:
413 past it, also for uploads that send no ``Content-Length``), turns a multipart upload into the JSON form
(``{"image": "<base64>", "filename": ..., other fields}``) and refuses what is neither (415) or not a JSON
object (400), each with a one-line ``{"error": reason}``. LitServe then hands the worker a plain dict: what
travels between processes is JSON, never an open upload. Every other path passes untouched.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _TooLarge(Exception):
    pass


class PredictGate:
    """ASGI middleware normalising ``POST`` bodies of ``path`` to JSON objects.

    Args:
        app: The ASGI app (LitServe's FastAPI app).
        path: The prediction route.
        max_bytes: Largest body accepted (413 beyond).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], path: str = "/predict", max_bytes: int = 20_000_000):
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("path") != self.path or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._body(scope, receive)
            payload = await self._payload(scope, body)
        except _TooLarge:
            await _error(413, f"request body larger than the server's --max_bytes {self.max_bytes}", scope, send)
            return
        except ValueError as e:
            await _error(400, str(e), scope, send)
            return
        except LookupError as e:
            await _error(415, str(e), scope, send)
            return
        data = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope.get("headers", []) if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # http.disconnect, when the client goes away
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise _TooLarge
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ValueError("client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _payload(self, scope: Scope, body: bytes) -> dict[str, Any]:
        ctype = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1").lower()
        if ctype.startswith("multipart/form-data"):
            return await _form(scope, body)
        if ctype.startswith("application/json") or (not ctype and body[:1] == b"{"):
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"the body is not valid JSON ({e})") from None
            if not isinstance(payload, dict):
                raise ValueError(f"the JSON body must be an object with an 'image' field, got {type(payload).__name__}")
            return payload
        raise LookupError(f"unsupported Content-Type {ctype or '(none)'!r}: send multipart/form-data with a file "
                          "field 'image', or application/json {\"image\": \"<base64>\"}")


async def _form(scope: Scope, body: bytes) -> dict[str, Any]:
    """A multipart body as the JSON form: files base64-encoded (the ``image`` file also gives ``filename``)."""
    async def once() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form(max_files=4, max_fields=32)
    except Exception as e:  # noqa: BLE001 - starlette raises several kinds for a malformed multipart body
        raise ValueError(f"malformed multipart body ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    payload: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            payload[key] = base64.b64encode(await value.read()).decode()
            if key == "image" and value.filename and "filename" not in form:
                payload["filename"] = value.filename
        else:
            payload[key] = value
    await form.close()
    return payload


async def _error(status: int, reason: str, scope: Scope, send: Send) -> None:
    async def nothing() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await JSONResponse({"error": reason}, status_code=status)(scope, nothing, send)
