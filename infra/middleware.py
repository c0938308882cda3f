"""The edge of every HTTP call: request id, API-Version, CORS, metrics, access log,
and a last-resort 500 envelope with no stack trace.

A pure ASGI middleware outside Starlette's own, so even an unhandled error gets the
envelope and the headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.envelope import API_VERSION, error_body, request_id_from
from infra.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = logging.getLogger("homepocket.http")

CORS_ALLOW_METHODS = "GET, POST, DELETE"
# The local blob store's signed URLs (storage/) take the browser's PUT of the ciphertext.
CORS_BLOB_PREFIX = "/blobs/"
CORS_BLOB_METHODS = "GET, PUT"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
CORS_EXPOSE_HEADERS = (
    "X-Request-ID, API-Version, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, "
    "X-RateLimit-Reset"
)


def cors_headers(origin: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """CORS for an allowed origin only; other origins get none (docs/CONTRACT.md §7)."""
    if origin is None or origin not in allowed:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
    }


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        allowed_origins: tuple[str, ...],
        route_of: Callable[[Scope], str],
    ) -> None:
        self.app = app
        self.allowed_origins = allowed_origins
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = request_id_from(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        origin = headers.get("origin")
        extra = {"API-Version": API_VERSION, "X-Request-ID": request_id}
        extra.update(cors_headers(origin, self.allowed_origins))
        if (
            scope["method"] == "OPTIONS"
            and "Access-Control-Allow-Origin" in extra
            and "access-control-request-method" in headers
        ):
            blob = scope["path"].startswith(CORS_BLOB_PREFIX)
            await self._preflight(send, extra, CORS_BLOB_METHODS if blob else CORS_ALLOW_METHODS)
            return

        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                mutable = MutableHeaders(scope=message)
                for key, value in extra.items():
                    mutable[key] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            log.error(
                "unhandled error",
                extra={
                    "route": self.route_of(scope),
                    "error_type": type(exc).__name__,
                    "request_id": request_id,
                },
            )
            _report(exc)
            if not response_started:
                await _send_500(send, request_id, extra)
            status = 500
        finally:
            route = self.route_of(scope)
            elapsed = time.perf_counter() - started
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], route).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "request_id": request_id,
                },
            )

    @staticmethod
    async def _preflight(send: Send, extra: Mapping[str, str], methods: str) -> None:
        headers = dict(extra)
        headers.update(
            {
                "Access-Control-Allow-Methods": methods,
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": b""})


async def _send_500(send: Send, request_id: str, extra: Mapping[str, str]) -> None:
    body = error_body(request_id, "INTERNAL_ERROR", "An internal error occurred.", {})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _report(exc: BaseException) -> None:
    try:
        import sentry_sdk

        sentry_sdk.capture_exception(exc)
    except Exception:  # reporting must never turn one error into two
        log.warning("error report failed")


def template_lookup(routes: Any) -> Callable[[Scope], str]:
    """Route template of the matched endpoint, never the raw path."""
    templates = {id(r.endpoint): r.path for r in routes if hasattr(r, "endpoint")}

    def route_of(scope: Scope) -> str:
        endpoint = scope.get("endpoint")
        return templates.get(id(endpoint), "unmatched") if endpoint is not None else "unmatched"

    return route_of
