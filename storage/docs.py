"""OpenAPI description of the photo endpoints (docs/CONTRACT.md §3)."""

from __future__ import annotations

from typing import Any

from infra.openapi import INTEGER, nullable, obj, op, path, string

PHOTO_ID = path("photo_id", string(pattern="^[0-9a-f]{32}$"))
UPLOAD_BODY = obj(
    ["book_id", "size_bytes"],
    book_id=string(pattern="^[A-Za-z0-9_-]{16,128}$"),
    size_bytes={"type": "integer", "minimum": 1, "description": "ciphertext bytes to PUT"},
    transaction_id=nullable(string(description="accepted, never stored")),
    mime_type=nullable(string(description="accepted, never stored")),
)
UPLOAD_OK = obj(
    ["photo_id", "s3_key", "upload_url", "upload_method", "upload_headers", "expires_in"],
    photo_id=string(),
    s3_key=string(description="photos/{book_ref}/{photo_id}: no raw id"),
    upload_url=string("uri"),
    upload_method=string(enum=["PUT"]),
    upload_headers={
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "send exactly these with the PUT; Content-Length is signed",
    },
    expires_in=INTEGER,
)
COMPLETE_OK = obj(["photo_id", "size_bytes"], photo_id=string(), size_bytes=INTEGER)
GET_OK = obj(
    ["photo_id", "download_url", "expires_in", "size_bytes", "created_at"],
    photo_id=string(),
    download_url=string("uri"),
    expires_in=INTEGER,
    size_bytes=INTEGER,
    created_at=string("date-time"),
)

PHOTOS: dict[str, dict[str, Any]] = {
    "/api/v1/photos/upload": {
        "post": op(
            "Reserve a photo upload: a PUT URL whose signature binds the declared size.",
            tag="photos",
            ok_status=201,
            body=UPLOAD_BODY,
            ok=UPLOAD_OK,
            errors=(
                "PAYLOAD_TOO_LARGE",
                "RATE_LIMIT_EXCEEDED",
                "PHOTO_TOO_LARGE",
                "QUOTA_EXCEEDED",
                "S3_ERROR",
            ),
        ),
    },
    "/api/v1/photos/{photo_id}/complete": {
        "post": op(
            "Check the uploaded object (HEAD) and keep it.",
            tag="photos",
            params=[PHOTO_ID],
            ok=COMPLETE_OK,
            errors=(
                "PAYLOAD_TOO_LARGE",
                "VALIDATION_ERROR",
                "PHOTO_NOT_FOUND",
                "UPLOAD_INCOMPLETE",
                "S3_ERROR",
            ),
        ),
    },
    "/api/v1/photos/{photo_id}": {
        "get": op(
            "A download URL for a completed photo of the caller's book.",
            tag="photos",
            params=[PHOTO_ID],
            ok=GET_OK,
            errors=("RATE_LIMIT_EXCEEDED", "PHOTO_NOT_FOUND", "S3_ERROR"),
        ),
        "delete": op(
            "Delete the photo's object and row.",
            tag="photos",
            ok_status=204,
            params=[PHOTO_ID],
            errors=("PHOTO_NOT_FOUND", "S3_ERROR"),
        ),
    },
}

_SIGNED_QUERY = [
    {"name": n, "in": "query", "required": True, "schema": string()}
    for n in ("expires", "signature")
]
BLOBS: dict[str, dict[str, Any]] = {
    "/blobs/{key}": {
        "put": {
            "summary": "Local blob store only: upload exactly the signed length (no token).",
            "tags": ["blobs"],
            "parameters": [
                path("key"),
                *_SIGNED_QUERY,
                {"name": "length", "in": "query", "required": True, "schema": INTEGER},
            ],
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": string("binary")}},
            },
            "responses": {
                "200": {"description": "stored"},
                "400": {"description": "VALIDATION_ERROR: Content-Length or body short"},
                "403": {"description": "FORBIDDEN: details.reason signature or expired"},
                "413": {"description": "PAYLOAD_TOO_LARGE: more bytes than signed"},
            },
        },
        "get": {
            "summary": "Local blob store only: download the object (no token).",
            "tags": ["blobs"],
            "parameters": [path("key"), *_SIGNED_QUERY],
            "responses": {
                "200": {
                    "description": "the ciphertext",
                    "content": {"application/octet-stream": {"schema": string("binary")}},
                },
                "403": {"description": "FORBIDDEN: details.reason signature or expired"},
                "404": {"description": "NOT_FOUND"},
            },
        },
    },
}
