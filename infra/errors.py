"""The contract's error codes, and the one exception that carries them.

Domain code raises `ApiError`; one handler (infra.envelope) turns it into the envelope.
Messages are fixed strings: an error never echoes client input or a secret.
"""

from __future__ import annotations

from typing import Any

# code -> HTTP status (the table of docs/CONTRACT.md §3).
STATUS: dict[str, int] = {
    "VALIDATION_ERROR": 400,
    "INVALID_SHORT_CODE": 400,
    "SHORT_CODE_EXPIRED": 400,
    "PHOTO_TOO_LARGE": 400,
    "INVALID_TOKEN": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "BOOK_NOT_FOUND": 404,
    "DEVICE_NOT_FOUND": 404,
    "PHOTO_NOT_FOUND": 404,
    "PAIRING_NOT_FOUND": 404,
    "SNAPSHOT_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "DEVICE_EXISTS": 409,
    "BOOK_EXISTS": 409,
    "BOOK_FULL": 409,
    "UPLOAD_INCOMPLETE": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "QUOTA_EXCEEDED": 413,
    "RATE_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    # A backend that refused or did not answer within BACKEND_TIMEOUT_S: try again later.
    "DATABASE_ERROR": 503,
    "S3_ERROR": 503,
    "SERVICE_UNAVAILABLE": 503,
}

# What a 503 tells the client to wait before it tries again.
RETRY_AFTER_S = 5

# When several errors apply, the first of these wins (docs/CONTRACT.md §3).
PRECEDENCE = (413, 401, 429, 403, 400, 404, 409)


class ApiError(Exception):
    """An error the client is told about, with the contract's code."""

    # The verified caller, when the refusal came after its token checked out: the one
    # place that audits refusals (infra.context.record_refusal) names it, and only then.
    device_id: str | None = None
    # The limit's variable name on a 429, for the audit event and the metric.
    limit_name: str | None = None

    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = STATUS[code]
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


UNAVAILABLE = {
    "DATABASE_ERROR": "The database is unavailable; try again.",
    "S3_ERROR": "The blob store did not answer; try again.",
    "SERVICE_UNAVAILABLE": "The service is briefly unavailable; try again.",
}


class Unavailable(ApiError):
    """A backend refused or did not answer in time: `503` with the backend's code
    (DATABASE_ERROR, S3_ERROR, or SERVICE_UNAVAILABLE for Redis) and a Retry-After.
    `backend` names it for logs and /ready; the message never holds a backend's own
    error text (it may name hosts)."""

    def __init__(self, code: str, backend: str) -> None:
        super().__init__(code, UNAVAILABLE[code], headers={"Retry-After": str(RETRY_AFTER_S)})
        self.backend = backend


def validation(field: str, problem: str) -> ApiError:
    return ApiError("VALIDATION_ERROR", f"{field}: {problem}", {"field": field})


def invalid_token(reason: str) -> ApiError:
    return ApiError("INVALID_TOKEN", "The token was refused.", {"reason": reason})


def forbidden(reason: str, device_id: str | None = None) -> ApiError:
    err = ApiError("FORBIDDEN", "This device may not do that.", {"reason": reason})
    err.device_id = device_id
    return err
