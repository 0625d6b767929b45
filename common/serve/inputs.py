"""What one ``POST /predict`` request carries, and the checks that turn a bad one into a one-line 4xx.

A request holds one image, either as a multipart file field ``image`` or as JSON ``{"image": "<base64>"}``,
plus optional fields (both forms take the same names; multipart values are text):

* ``id``: echoed in the response (default: a fresh one), so a client can match responses to requests;
* ``filename``: the image's name (multipart: the uploaded file's name);
* ``object``: object name of the image (default: the model's only object);
* ``defect_types``: the vocabulary for this request only, e.g. ``"[good,scratch,dent]"`` or a JSON list;
* ``image_threshold``, ``pixel_threshold``: decision thresholds for this request only;
* ``overlay``: ``true`` to get the overlay PNG (base64) in the response.

:class:`BadRequest` carries the HTTP status and the reason; nothing here reaches the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

FIELDS = ("image", "id", "filename", "object", "defect_types", "image_threshold", "pixel_threshold", "overlay")
"""The fields a request may carry."""
OVERRIDES = ("defect_types", "image_threshold", "pixel_threshold")
"""Fields that change the model's settings for one request (:data:`common.predict.MODEL_OPTIONS` names)."""


class BadRequest(Exception):
    """A request the server refuses, with its HTTP status (4xx) and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class ImageRequest:
    """One checked request.

    Attributes:
        data: The image file's bytes (checked to decode completely).
        id: The client's id (or a fresh one).
        filename: A safe file name for the image (``[A-Za-z0-9_.-]``).
        object: Object name, or ``None`` for the model's default.
        overrides: Model settings for this request only (keys of :data:`OVERRIDES`).
        overlay: Whether the response carries the overlay PNG.
        size: ``(width, height)`` of the image.
    """

    data: bytes
    id: str
    filename: str
    object: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    overlay: bool = False
    size: tuple[int, int] = (0, 0)


def names(value: Any) -> list[str]:
    """A vocabulary given as a JSON list or as text ``"[good,scratch]"`` / ``"good,scratch"``."""
    if isinstance(value, list):
        items = [str(v).strip() for v in value]
    else:
        items = [n.strip().strip("'\"") for n in str(value).strip().strip("[]").split(",")]
    items = [n for n in items if n]
    if not items:
        raise BadRequest(400, "defect_types is empty; give names like [good,scratch,dent]")
    return items


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _threshold(key: str, value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise BadRequest(400, f"{key} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise BadRequest(400, f"{key} must be a number in [0, 1], got {t}")
    return t


def safe_name(name: str | None, default: str = "image") -> str:
    """The last path part of ``name`` with anything but ``[A-Za-z0-9_.-]`` replaced (at most 80 characters)."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._")[:80]
    return base or default


def image_bytes(payload: dict[str, Any]) -> tuple[bytes, str | None]:
    """The image bytes and file name of a parsed request body (base64 text from JSON, raw bytes from multipart).

    Raises:
        BadRequest: 400 when the field is missing, unknown fields are given, or the base64 text does not decode.
    """
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise BadRequest(400, f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    if "image" not in payload:
        raise BadRequest(400, "no 'image' field: send the file as multipart field 'image' or JSON "
                              '{"image": "<base64>"}')
    value = payload["image"]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if not isinstance(value, str):
        raise BadRequest(400, f"'image' must be base64 text or a file, got {type(value).__name__}")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value  # a data: URL
    try:
        return base64.b64decode(text, validate=True), None
    except (binascii.Error, ValueError):
        raise BadRequest(400, "'image' is not valid base64 text") from None


def check_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` of an image file's bytes after checking that it decodes completely.

    Raises:
        BadRequest: 400 for bytes that are not an image or a truncated/corrupt one, 413 for more pixels than
            ``max_pixels`` (checked from the header, before decoding).
    """
    if not data:
        raise BadRequest(400, "'image' is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadRequest(400, f"'image' is not an image ({len(data)} bytes; PIL: {str(e).splitlines()[0]})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise BadRequest(413, f"image is {w}x{h} = {w * h} pixels, more than the server's --max_pixels {max_pixels}")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadRequest(400, f"'image' is truncated or corrupt ({str(e).splitlines()[0]})") from None
    return w, h


def parse_request(payload: dict[str, Any], max_pixels: int) -> ImageRequest:
    """Checks a parsed request body (JSON object or multipart form as a dict) and returns the request.

    Raises:
        BadRequest: A missing/unknown field, bad base64, a value of the wrong kind, or an image that is not an
            image, is truncated or too large.
    """
    data, upload_name = image_bytes(payload)
    size = check_image(data, max_pixels)
    overrides: dict[str, Any] = {}
    if payload.get("defect_types") not in (None, ""):
        overrides["defect_types"] = names(payload["defect_types"])
    for key in ("image_threshold", "pixel_threshold"):
        if payload.get(key) not in (None, ""):
            overrides[key] = _threshold(key, payload[key])
    rid = str(payload.get("id") or uuid.uuid4().hex[:12])
    if len(rid) > 200:
        raise BadRequest(400, f"id is {len(rid)} characters long; at most 200")
    return ImageRequest(data=data, id=rid, filename=safe_name(payload.get("filename") or upload_name),
                        object=str(payload["object"]) if payload.get("object") else None, overrides=overrides,
                        overlay=_flag(payload.get("overlay", False)), size=size)


def encode_json_request(data: bytes, **fields: Any) -> bytes:
    """A JSON request body for ``data`` (a client's helper: the tests and the load test use it)."""
    return json.dumps({"image": base64.b64encode(data).decode(), **fields}).encode()
