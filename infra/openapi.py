"""The OpenAPI 3 document: every endpoint, its body, its enveloped answer, its errors.

Each capability describes its own paths with `op`; `document` puts them together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from infra.errors import STATUS

Schema = dict[str, Any]

META: Schema = {
    "type": "object",
    "properties": {"timestamp": {"type": "integer"}, "request_id": {"type": "string"}},
    "required": ["timestamp", "request_id"],
}
ERROR_ENVELOPE: Schema = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
            "required": ["code", "message", "details"],
        },
        "meta": META,
    },
    "required": ["success", "error", "meta"],
}


def obj(required: Iterable[str] = (), **props: Schema) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def string(fmt: str | None = None, **kw: Any) -> Schema:
    out: Schema = {"type": "string", **kw}
    if fmt:
        out["format"] = fmt
    return out


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
BASE64 = string("byte")
BOOK_ID_PARAM = {
    "name": "book_id",
    "in": "path",
    "required": True,
    "schema": string(pattern="^[A-Za-z0-9_-]{16,128}$"),
}
AUTH_ERRORS = ("INVALID_TOKEN", "FORBIDDEN")


def query(name: str, schema: Schema, description: str = "") -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def path(name: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema or string()}


def op(
    summary: str,
    *,
    tag: str,
    ok_status: int = 200,
    ok: Schema | None = None,
    body: Schema | None = None,
    errors: Iterable[str] = (),
    params: Iterable[Schema] = (),
    auth: bool = True,
) -> dict[str, Any]:
    """One operation, its success wrapped in the envelope, its errors grouped by status."""
    responses: dict[str, Any] = {}
    if ok_status == 204:
        responses["204"] = {"description": "Done; no body."}
    else:
        envelope = obj(
            ["success", "data", "meta"],
            success={"type": "boolean", "enum": [True]},
            data=ok or {"type": "object"},
            meta=META,
        )
        responses[str(ok_status)] = {
            "description": "Success",
            "content": {"application/json": {"schema": envelope}},
        }
    codes = list(errors) + (list(AUTH_ERRORS) if auth else [])
    codes += ["VALIDATION_ERROR"] if body else []
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(STATUS[code], []).append(code)
    for status, names in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "Error codes: " + ", ".join(names),
            "content": {"application/json": {"schema": ERROR_ENVELOPE}},
        }
    out: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        out["parameters"] = list(params)
    if body:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if auth:
        out["security"] = [{"deviceToken": []}]
    return out


def document(paths: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Home Pocket relay",
            "version": "1.0",
            "description": "Zero-knowledge relay: forwards ciphertext, stores hashed ids.",
        },
        "components": {
            "securitySchemes": {
                "deviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT signed by the device's Ed25519 key (alg EdDSA)",
                },
            },
            "schemas": {"ErrorEnvelope": ERROR_ENVELOPE},
        },
        "paths": dict(paths),
    }


DEVICE = obj(
    ["device_id", "public_key", "last_active_at", "is_current", "online"],
    device_id=string(),
    public_key=BASE64,
    last_active_at=string("date-time"),
    is_current=BOOLEAN,
    online=BOOLEAN,
)

DEVICES: dict[str, dict[str, Any]] = {
    "/api/v1/devices": {
        "post": op(
            "Register a device key (the token must be signed by it); optionally create a book.",
            tag="devices",
            ok_status=201,
            body=obj(
                ["public_key"],
                public_key=BASE64,
                book_id=nullable(string(pattern="^[A-Za-z0-9_-]{16,128}$")),
            ),
            ok=obj(
                ["device_id", "book_id", "created_at"],
                device_id=string(),
                book_id=nullable(string()),
                created_at=string("date-time"),
            ),
            errors=(
                "PAYLOAD_TOO_LARGE",
                "RATE_LIMIT_EXCEEDED",
                "DEVICE_EXISTS",
                "BOOK_EXISTS",
                "SERVICE_UNAVAILABLE",
            ),
        ),
    },
    "/api/v1/books/{book_id}/devices": {
        "get": op(
            "The book's member devices.",
            tag="devices",
            params=[BOOK_ID_PARAM],
            ok=obj(
                ["devices", "total_count"],
                devices={"type": "array", "items": DEVICE},
                total_count=INTEGER,
            ),
        ),
    },
    "/api/v1/books/{book_id}/devices/{device_id}": {
        "delete": op(
            "Revoke a device of the book.",
            tag="devices",
            ok_status=204,
            params=[BOOK_ID_PARAM, path("device_id")],
            errors=("DEVICE_NOT_FOUND",),
        ),
    },
    "/api/v1/books/{book_id}": {
        "delete": op(
            "Erase the book and everything the server holds of it.",
            tag="devices",
            ok_status=204,
            params=[BOOK_ID_PARAM],
        ),
    },
    "/api/v1/audit": {
        "get": op(
            "The calling device's own audit events, newest first.",
            tag="audit",
            params=[
                query("before", INTEGER, "cursor from next_cursor"),
                query("limit", INTEGER, "default 50, max 200"),
            ],
            ok=obj(
                ["events", "next_cursor"],
                events={"type": "array", "items": obj()},
                next_cursor=nullable(INTEGER),
            ),
            errors=("VALIDATION_ERROR",),
        ),
    },
}

OPERATIONAL: dict[str, dict[str, Any]] = {
    "/health": {
        "get": {
            "summary": "Process alive.",
            "tags": ["operations"],
            "responses": {"200": {"description": "alive"}},
        }
    },
    "/ready": {
        "get": {
            "summary": "Every configured backend answers.",
            "tags": ["operations"],
            "responses": {
                "200": {"description": "ready"},
                "503": {"description": "SERVICE_UNAVAILABLE naming the backend that failed"},
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics.",
            "tags": ["operations"],
            "responses": {"200": {"description": "Prometheus text format"}},
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document.",
            "tags": ["operations"],
            "responses": {"200": {"description": "OpenAPI 3"}},
        }
    },
}
