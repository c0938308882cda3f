"""OpenAPI description of the photo and snapshot endpoints (docs/CONTRACT.md §3)."""

from __future__ import annotations

from typing import Any

from infra.openapi import BOOK_ID_PARAM, INTEGER, nullable, obj, op, path, string

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

SNAPSHOT_ID = path("snapshot_id", string(pattern="^[0-9a-f]{32}$"))
SNAPSHOT_BODY = obj(
    ["epoch", "covers_seq", "size_bytes"],
    epoch=string(maxLength=64, description="the book's current epoch"),
    covers_seq={
        "type": "integer",
        "minimum": 0,
        "description": "the snapshot holds every op through this seq; at most latest_seq",
    },
    size_bytes={
        "type": "integer",
        "minimum": 1,
        "description": "ciphertext bytes to PUT; at most SNAPSHOT_MAX_BYTES (default 64 MiB)",
    },
)
SNAPSHOT_UPLOAD_OK = obj(
    ["snapshot_id", "upload_url", "upload_method", "upload_headers", "expires_in"],
    snapshot_id=string(),
    upload_url=string("uri"),
    upload_method=string(enum=["PUT"]),
    upload_headers=UPLOAD_OK["properties"]["upload_headers"],
    expires_in=INTEGER,
)
SNAPSHOT_OK = obj(
    ["snapshot_id", "epoch", "covers_seq", "size_bytes"],
    snapshot_id=string(),
    epoch=string(),
    covers_seq=INTEGER,
    size_bytes=INTEGER,
)
SNAPSHOT_LATEST_OK = obj(
    ["snapshot_id", "epoch", "covers_seq", "download_url", "size_bytes", "created_at"],
    snapshot_id=string(),
    epoch=string(),
    covers_seq=INTEGER,
    download_url=string("uri"),
    size_bytes=INTEGER,
    created_at=string("date-time"),
)

SNAPSHOTS: dict[str, dict[str, Any]] = {
    "/api/v1/books/{book_id}/snapshots": {
        "post": op(
            "Reserve an encrypted full-state snapshot upload of the current epoch: a PUT"
            " URL whose signature binds the declared size.",
            tag="snapshots",
            ok_status=201,
            params=[BOOK_ID_PARAM],
            body=SNAPSHOT_BODY,
            ok=SNAPSHOT_UPLOAD_OK,
            errors=("PAYLOAD_TOO_LARGE", "QUOTA_EXCEEDED", "S3_ERROR"),
        ),
    },
    "/api/v1/books/{book_id}/snapshots/{snapshot_id}/complete": {
        "post": op(
            "Check the uploaded object (HEAD) and keep it; the backlog's ops it covers are"
            " trimmed and only the book's two best snapshots are kept.",
            tag="snapshots",
            params=[BOOK_ID_PARAM, SNAPSHOT_ID],
            ok=SNAPSHOT_OK,
            errors=(
                "PAYLOAD_TOO_LARGE",
                "VALIDATION_ERROR",
                "SNAPSHOT_NOT_FOUND",
                "UPLOAD_INCOMPLETE",
                "S3_ERROR",
            ),
        ),
    },
    "/api/v1/books/{book_id}/snapshots/latest": {
        "get": op(
            "The book's latest snapshot (highest covers_seq of the current epoch, else of"
            " the newest epoch that has one) and a download URL.",
            tag="snapshots",
            params=[BOOK_ID_PARAM],
            ok=SNAPSHOT_LATEST_OK,
            errors=("SNAPSHOT_NOT_FOUND", "S3_ERROR"),
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
