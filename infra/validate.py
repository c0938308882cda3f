"""Reading and checking untrusted request input: sizes first, then JSON, then fields.

Every handler reads its body through `read_body` (413 over the limit, counted while
streaming so a lying Content-Length buys nothing) and checks fields with the helpers
below, which raise `400 VALIDATION_ERROR` naming the field and never echo the value.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from typing import Any

import orjson
from starlette.requests import Request

from infra.errors import ApiError, validation

BOOK_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")
DEVICE_ID = re.compile(r"[0-9a-f]{32}")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_PADS = (b"", b"=", b"==")


def too_large(limit: int) -> ApiError:
    return ApiError("PAYLOAD_TOO_LARGE", "The request body is too large.", {"limit": limit})


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise validation("Content-Length", "must be a whole number")
        if int(declared) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, or 400. An empty body counts as `{}` for calls with only optional fields."""
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise validation("body", "is not valid JSON") from None
    if not isinstance(value, dict):
        raise validation("body", "must be a JSON object")
    return value


def string(
    body: dict[str, Any],
    name: str,
    *,
    pattern: re.Pattern[str] | None = None,
    max_len: int = 1024,
    required: bool = True,
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise validation(name, "is required")
        return None
    if not isinstance(value, str):
        raise validation(name, "must be a string")
    if "\x00" in value:
        raise validation(name, "must not hold a NUL character")
    if len(value) > max_len:
        raise validation(name, f"must be at most {max_len} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise validation(name, "has the wrong format")
    return value


def required_string(body: dict[str, Any], name: str, **kw: Any) -> str:
    value = string(body, name, required=True, **kw)
    assert value is not None
    return value


def integer(
    body: dict[str, Any],
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    required: bool = True,
) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise validation(name, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise validation(name, "must be an integer")
    if minimum is not None and value < minimum:
        raise validation(name, f"must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise validation(name, f"must be at most {maximum}")
    return value


def boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise validation(name, "must be true or false")
    return value


def base64_size(value: str) -> int | None:
    """Decoded size of canonical padded base64 (RFC 4648 s.4), or None when malformed.

    Checks the alphabet and padding without decoding: the relay forwards payloads as
    received and never needs their bytes. The alphabet check is one `bytes.translate`
    (C speed; it runs on every op at the relay's full rate).
    """
    if not value.isascii():
        return None
    raw = value.encode("ascii")
    if len(raw) % 4:
        return None
    pad = 2 if raw.endswith(b"==") else 1 if raw.endswith(b"=") else 0
    # Deleting the alphabet must leave exactly the trailing padding: no stray symbol
    # and no `=` anywhere else.
    if raw.translate(None, _B64_ALPHABET) != _B64_PADS[pad]:
        return None
    # Canonical: the unused low bits of the last symbol must be zero.
    if pad and _B64_ALPHABET.index(raw[-pad - 1]) & (0b1111 if pad == 2 else 0b11):
        return None
    return len(raw) // 4 * 3 - pad


def base64_bytes(
    body: dict[str, Any], name: str, *, exact: int | None = None, max_bytes: int | None = None
) -> bytes:
    value = required_string(body, name, max_len=(max_bytes or exact or 1024) * 4 // 3 + 8)
    if base64_size(value) is None:
        raise validation(name, "must be standard padded base64")
    try:
        decoded = b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise validation(name, "must be standard padded base64") from None
    if exact is not None and len(decoded) != exact:
        raise validation(name, f"must decode to {exact} bytes")
    return decoded
