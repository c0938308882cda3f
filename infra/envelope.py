"""The response envelope of docs/CONTRACT.md §3, for success and error alike.

Every JSON body the server writes goes through `ok` or `error_body`, so the shape,
`meta.timestamp` and `meta.request_id` never differ between endpoints.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response

from infra.errors import RETRY_AFTER_S, ApiError

API_VERSION = "1.0"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_from(header: str | None) -> str:
    """Echo a well-formed client id, else make one."""
    if header and _CLIENT_REQUEST_ID.fullmatch(header):
        return header
    return "req-" + secrets.token_hex(8)


def current_request_id(conn: HTTPConnection) -> str:
    return str(conn.scope.get("state", {}).get("request_id") or request_id_from(None))


def _meta(request_id: str) -> dict[str, Any]:
    return {"timestamp": int(time.time()), "request_id": request_id}


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def ok(conn: HTTPConnection, data: Any, status: int = 200) -> Response:
    body = {"success": True, "data": data, "meta": _meta(current_request_id(conn))}
    return JSON(body, status_code=status)


def error_body(request_id: str, code: str, message: str, details: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "success": False,
            "error": {"code": code, "message": message, "details": details},
            "meta": _meta(request_id),
        }
    )


def error_response(conn: HTTPConnection, exc: ApiError) -> Response:
    body = error_body(current_request_id(conn), exc.code, exc.message, exc.details)
    headers = exc.headers
    if exc.status == 503 and "Retry-After" not in headers:  # every 503 says when to retry
        headers = {**headers, "Retry-After": str(RETRY_AFTER_S)}
    return Response(body, exc.status, headers=headers, media_type="application/json")


def no_content() -> Response:
    return Response(status_code=204)
