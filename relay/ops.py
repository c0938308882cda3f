"""Checks on one op from a client, shared by the socket and `POST /relay/send`.

The payload is checked as base64 and measured without being decoded (the relay never
needs its bytes); errors name the field and never echo a value.
"""

from __future__ import annotations

from typing import Any

from infra.errors import ApiError, validation
from infra.validate import base64_size
from relay.broker import NewOp

MAX_CLIENT_ID_CHARS = 64
MAX_FUTURE_S = 24 * 3600  # a broken clock must not poison peers' ordering


def client_id(message: dict[str, Any]) -> str | None:
    value = message.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_CLIENT_ID_CHARS:
        raise validation("id", f"must be a string of 1 to {MAX_CLIENT_ID_CHARS} characters")
    if "\x00" in value:
        raise validation("id", "must not hold a NUL character")
    return value


def echo_id(message: dict[str, Any]) -> str | None:
    """The id to put on an error: only a well-formed one is echoed."""
    try:
        return client_id(message)
    except ApiError:
        return None


def payload_and_timestamp(message: dict[str, Any], max_op_bytes: int, now: int) -> tuple[str, int]:
    payload = message.get("payload")
    if not isinstance(payload, str):
        raise validation("payload", "must be a base64 string")
    if len(payload) > (max_op_bytes + 2) // 3 * 4:
        raise too_large(max_op_bytes)
    size = base64_size(payload)
    if size is None or size == 0:
        raise validation("payload", "must be non-empty standard padded base64")
    if size > max_op_bytes:
        raise too_large(max_op_bytes)
    timestamp = message.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise validation("timestamp", "must be a whole number of Unix seconds")
    if timestamp > now + MAX_FUTURE_S:
        raise validation("timestamp", "is more than 24 h in the future")
    return payload, timestamp


def new_op(
    message: dict[str, Any], device_id: str, origin: str, max_op_bytes: int, now: int
) -> NewOp:
    """The op a client's message asks for, checked (ApiError when it is refused);
    `device_id` is the authenticated sender's."""
    client = client_id(message)
    payload, timestamp = payload_and_timestamp(message, max_op_bytes, now)
    return NewOp(device_id, client, payload, timestamp, origin, now)


def too_large(limit: int) -> ApiError:
    return ApiError("PAYLOAD_TOO_LARGE", "The op payload is too large.", {"limit": limit})
