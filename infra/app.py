"""The app factory: shared services, each capability's routes, the edge middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from infra import devices_api, openapi
from infra.clock import Clock
from infra.context import Capability, Infra, record_refusal
from infra.envelope import JSON, error_response, ok
from infra.errors import ApiError, Unavailable
from infra.metrics import BACKEND_UP, REGISTRY
from infra.middleware import EdgeMiddleware, template_lookup
from infra.settings import Settings

log = logging.getLogger("homepocket")
Builder = Callable[[Infra], Capability]
READY_TIMEOUT_S = 2.0


def default_capabilities() -> list[Builder]:
    """Every capability the server offers, in the order they start."""
    builders: list[Builder] = [devices_api.build]
    for module in ("relay.app", "pairing.app", "storage.app"):
        try:
            imported = __import__(module, fromlist=["build"])
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a missing dependency inside it is a real error
                raise
            continue
        builders.append(imported.build)
    return builders


class App(Starlette):
    """Starlette, with the long-lived sockets dispatched straight from the entry point.

    A socket's session awaits for as long as the connection lives, and every frame it
    was dispatched through (the middleware, the router) stays alive with it: about half
    a kilobyte each, per idle connection. None of them acts on a WebSocket (the edge
    middleware is HTTP-only; the socket apps answer their own errors), so sockets skip
    them. Everything else goes the usual way.
    """

    sockets: Sequence[WebSocketRoute] = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            for route in self.sockets:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope["app"] = self
                    scope.update(child)
                    await route.app(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    clock: Clock | None = None,
    capabilities: Sequence[Builder] | None = None,
) -> Starlette:
    infra = Infra(settings, clock)
    built = [b(infra) for b in (capabilities or default_capabilities())]

    async def health(request: Request) -> Response:
        return ok(request, {"status": "ok"})

    async def ready(request: Request) -> Response:
        checks: dict[str, Callable[[], Awaitable[None]]] = {"database": infra.db.ping}
        if settings.redis_url:
            checks["redis"] = infra.limiter.ping
        for cap in built:
            checks.update(cap.ready_checks)
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), READY_TIMEOUT_S)
                BACKEND_UP.labels(name).set(1)
            except Exception:
                BACKEND_UP.labels(name).set(0)
                log.warning("backend not ready", extra={"backend": name})
                raise ApiError(
                    "SERVICE_UNAVAILABLE", f"{name} is unavailable.", {"backend": name}
                ) from None
        return ok(request, {"status": "ready", "backends": sorted(checks)})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    paths: dict[str, dict[str, object]] = dict(openapi.OPERATIONAL)
    for cap in built:
        for p, ops in cap.openapi_paths.items():
            paths.setdefault(p, {}).update(ops)
    spec = openapi.document(paths)

    async def openapi_json(request: Request) -> Response:
        return JSON(spec)

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    for cap in built:
        routes.extend(cap.routes)
    sockets = [route for cap in built for route in cap.sockets]
    routes.extend(sockets)  # listed with the rest; matched first by App

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await infra.open()
        started: list[Capability] = []
        try:
            for cap in built:
                if cap.start:
                    await cap.start()
                started.append(cap)
            log.info("started", extra={"backends": settings.production_backends or ["embedded"]})
            yield
        finally:
            for cap in reversed(started):
                if cap.stop:
                    try:
                        await cap.stop()
                    except Exception:
                        log.exception("stop failed", extra={"capability": cap.name})
            await infra.close()

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        await record_refusal(infra, exc, request)
        return error_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            err = ApiError(
                "METHOD_NOT_ALLOWED", "Method not allowed.", headers=dict(exc.headers or {})
            )
        elif exc.status_code == 404:
            err = ApiError("NOT_FOUND", "No such route.")
        else:
            err = ApiError("VALIDATION_ERROR", "The request was malformed.")
        return error_response(request, err)

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: api_error,
        HTTPException: http_error,
    }
    if settings.redis_url:
        # redis-py's own failures (a call on the shared client that Redis refused or did
        # not answer in time): 503 SERVICE_UNAVAILABLE like ours, never a 500.
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        async def redis_down(request: Request, exc: Exception) -> Response:
            log.warning("redis unavailable", extra={"error_type": type(exc).__name__})
            return error_response(request, Unavailable("SERVICE_UNAVAILABLE", "redis"))

        handlers[RedisConnectionError] = handlers[RedisTimeoutError] = redis_down

    app = App(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                EdgeMiddleware,
                allowed_origins=settings.allowed_origins,
                route_of=template_lookup(routes),
            )
        ],
        exception_handlers=handlers,
    )
    app.sockets = sockets
    app.state.infra = infra
    return app
