"""What one search of the page (:mod:`anet.search.web`) may cost the server, and the gate that holds it.

A body over ``max_body_bytes``, or an upload that decodes to more than ``max_pixels``, answers 413
with one line before it is read or decoded (the image header is enough); beyond ``max_searches``
in flight, ``POST /api/search`` answers 503 with ``Retry-After`` before its body is read. So a
flood of hostile uploads costs at most ``max_searches`` bodies and decodes at once, and the other
routes keep answering (tests/drills/drill_upload_flood.py).

Example:
    >>> app = create_app(index, predictor, Limits(max_searches=2))      # anet.search.web
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from anet.errors import UserError

_DRAIN = 4  # a body refused for its size is read (and dropped) up to this many times the cap, then cut off


@dataclass(frozen=True)
class Limits:
    """What ``POST /api/search`` may cost the server (see the module docstring)."""

    max_body_bytes: int = 8 << 20  # base64 of a 6 MB image
    max_pixels: int = 4096 * 4096  # decoded RGB: 48 MB
    max_searches: int = 4  # in flight at once; the thread pool would take ~40
    retry_after_s: int = 1


class TooLarge(UserError):
    """An upload over a :class:`Limits` cap (answered 413)."""


def upload_bytes(image: str, max_pixels: int) -> bytes:
    """An upload's base64 text -> its bytes, refused (:class:`TooLarge`) when it decodes to more than
    ``max_pixels``: the header is read, not the pixels. Bytes that are no image go on to the predictor,
    which names the problem."""
    try:
        data = base64.b64decode(image.split(",", 1)[-1] if image.startswith("data:") else image, validate=False)
    except (binascii.Error, ValueError):
        raise UserError("image: text that is not base64 image data") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError:  # PIL's own line, past 2 x Image.MAX_IMAGE_PIXELS
        raise TooLarge(f"image: over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP decoded; "
                       f"{_most(max_pixels)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return data
    if width * height > max_pixels:
        raise TooLarge(f"image: {width} x {height} px ({width * height / 1e6:.0f} MP decoded); {_most(max_pixels)}")
    return data


def _most(max_pixels: int) -> str:
    side = int(max_pixels ** 0.5)
    return f"the page takes at most {max_pixels / 1e6:.1f} MP (e.g. {side} x {side}): scale it down"


class SearchGate:
    """ASGI middleware for ``POST /api/search``: a body over ``max_body_bytes`` answers 413 (as declared or
    as it arrives), more than ``max_searches`` in flight answer 503 with ``Retry-After``; both before the
    body is read. Other routes pass untouched, so the page keeps answering under load."""

    def __init__(self, app: Any, limits: Limits):
        self.app, self.limits, self.in_flight = app, limits, 0  # in_flight: changed on the event loop only

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/api/search" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        cap = self.limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        too_long = f"body: more than {cap / 2**20:g} MB; send a smaller image (at most {cap * 0.75 / 2**20:g} MB)"
        if not declared.isdigit():
            return await _refuse(receive, send, 0, 400, "body: a bad Content-Length header")
        if int(declared) > cap:
            return await _refuse(receive, send, _DRAIN * cap, 413, too_long)
        if self.in_flight >= self.limits.max_searches:
            wait = self.limits.retry_after_s
            return await _refuse(receive, send, cap, 503, f"busy: {self.in_flight} searches in flight (the page "
                                 f"takes {self.limits.max_searches} at once); retry in {wait} s",
                                 {"retry-after": str(wait)})
        self.in_flight += 1
        try:
            body, more = await _read_body(receive, cap)
            if body is None:
                return await _refuse(receive, send, _DRAIN * cap, 413, too_long, more=more)
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_flight -= 1


async def _read_body(receive: Any, cap: int) -> tuple[bytes | None, bool]:
    """The whole request body, or None as soon as it passes ``cap`` bytes; and whether more is to come."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk, more = message.get("body", b""), message.get("more_body", False)
        size += len(chunk)
        if size > cap:
            return None, more
        chunks.append(chunk)
    return b"".join(chunks), False


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that gives the already read ``body`` once, then waits on the real one."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(receive: Any, send: Any, drain: int, status: int, error: str,
                  headers: dict[str, str] | None = None, more: bool = True) -> None:
    """Read and drop up to ``drain`` bytes of the body (``more``: some is still to come), then answer
    ``{"error": ...}`` and close: a client still sending when the server closes gets a reset that can
    swallow the answer."""
    size = 0
    while more and size <= drain:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    payload = json.dumps({"error": error}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"), *((k.encode(), v.encode()) for k, v in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})
