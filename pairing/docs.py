"""OpenAPI descriptions of the four pairing endpoints (docs/CONTRACT.md §3)."""

from __future__ import annotations

from typing import Any

from infra.openapi import BASE64, BOOLEAN, INTEGER, nullable, obj, op, string

PAIRING_ID = string(pattern="^[A-Za-z0-9_-]{1,64}$")
BOOK_ID = string(pattern="^[A-Za-z0-9_-]{16,128}$")
STATUS = string(enum=["waiting", "matched", "confirmed", "rejected"])

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/pairing/generate": {
        "post": op(
            "A member asks for a 6-digit code another device can join its book with.",
            tag="pairing",
            ok_status=201,
            body=obj(["book_id"], book_id=BOOK_ID),
            ok=obj(
                ["short_code", "pairing_id", "expires_at", "ttl_seconds"],
                short_code=string(pattern="^[0-9]{6}$"),
                pairing_id=PAIRING_ID,
                expires_at=string("date-time"),
                ttl_seconds=INTEGER,
            ),
            errors=("PAYLOAD_TOO_LARGE", "RATE_LIMIT_EXCEEDED", "SERVICE_UNAVAILABLE"),
        ),
    },
    "/api/v1/pairing/verify": {
        "post": op(
            "A registered device in no book claims a code; it becomes a pending member.",
            tag="pairing",
            body=obj(
                ["short_code", "public_key"],
                short_code=string(pattern="^[0-9]{6}$"),
                public_key=BASE64,
            ),
            ok=obj(
                ["matched", "status", "pairing_id", "peer_public_key", "peer_device_id", "book_id"],
                matched=BOOLEAN,
                status=STATUS,
                pairing_id=PAIRING_ID,
                peer_public_key=BASE64,
                peer_device_id=string(),
                book_id=BOOK_ID,
            ),
            errors=(
                "PAYLOAD_TOO_LARGE",
                "RATE_LIMIT_EXCEEDED",
                "INVALID_SHORT_CODE",
                "SHORT_CODE_EXPIRED",
                "DEVICE_EXISTS",
                "BOOK_FULL",
                "SERVICE_UNAVAILABLE",
            ),
        ),
    },
    "/api/v1/pairing/exchange": {
        "post": op(
            "Either device of a session deposits an opaque payload and reads the peer's.",
            tag="pairing",
            body=obj(
                ["pairing_id"],
                pairing_id=PAIRING_ID,
                payload=nullable({**BASE64, "description": "at most 64 KiB decoded, 8 per side"}),
            ),
            ok=obj(
                ["status", "peer_public_key", "peer_device_id", "payloads"],
                status=STATUS,
                peer_public_key=nullable(BASE64),
                peer_device_id=nullable(string()),
                payloads={"type": "array", "items": BASE64},
            ),
            errors=("PAYLOAD_TOO_LARGE", "PAIRING_NOT_FOUND", "SERVICE_UNAVAILABLE"),
        ),
    },
    "/api/v1/pairing/confirm": {
        "post": op(
            "The generating device accepts or rejects the joiner after comparing the SAS.",
            tag="pairing",
            body=obj(["pairing_id", "accept"], pairing_id=PAIRING_ID, accept=BOOLEAN),
            ok=obj(["status"], status=STATUS),
            errors=("PAYLOAD_TOO_LARGE", "PAIRING_NOT_FOUND", "SERVICE_UNAVAILABLE"),
        ),
    },
}
