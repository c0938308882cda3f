"""Helpers for the pairing tests: a small client that signs each call, and servers
started with changed settings."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from infra.clock import ManualClock
from infra.settings import Settings
from tests.conftest import make_settings, reset_production
from tests.support.keys import DeviceKey
from tests.support.services import InProcessServer

VERIFY_LIMIT = "RATE_LIMIT_PAIRING_VERIFY_FAILURES"


def new_book_id() -> str:
    return str(uuid.uuid4())


def seed_of(device: DeviceKey) -> bytes:
    return device.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Api:
    """A few calls, each signed by the device that makes it."""

    def __init__(self, client: httpx.AsyncClient, clock: ManualClock | None = None) -> None:
        self.client = client
        self.clock = clock

    def auth(self, device: DeviceKey, book_id: Any = ...) -> dict[str, str]:
        if self.clock is None:
            return device.auth(book_id)
        now = self.clock.now()
        return device.auth(book_id, iat=now, exp=now + 600)

    async def post(
        self, path: str, device: DeviceKey, body: Any, book_id: Any = ..., **kw: Any
    ) -> httpx.Response:
        headers = {**self.auth(device, book_id), **kw.pop("headers", {})}
        return await self.client.post(f"/api/v1{path}", json=body, headers=headers, **kw)

    async def register(self, device: DeviceKey, book_id: str | None = None) -> None:
        device.book_id = book_id
        body: dict[str, Any] = {"public_key": device.public_b64}
        if book_id:
            body["book_id"] = book_id
        response = await self.post("/devices", device, body)
        assert response.status_code in (200, 201), response.text

    async def founder(self) -> DeviceKey:
        device = DeviceKey()
        await self.register(device, new_book_id())
        return device

    async def newcomer(self) -> DeviceKey:
        device = DeviceKey()
        await self.register(device)
        return device

    async def generate(self, g: DeviceKey) -> dict[str, Any]:
        response = await self.post("/pairing/generate", g, {"book_id": g.book_id})
        assert response.status_code == 201, response.text
        return dict(response.json()["data"])

    async def verify(self, j: DeviceKey, code: Any, **kw: Any) -> httpx.Response:
        body = {"short_code": code, "public_key": j.public_b64}
        return await self.post("/pairing/verify", j, body, None, **kw)

    async def exchange(
        self, device: DeviceKey, pairing_id: str, payload: bytes | str | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"pairing_id": pairing_id}
        if payload is not None:
            body["payload"] = payload if isinstance(payload, str) else b64(payload)
        return await self.post("/pairing/exchange", device, body, None)

    async def confirm(self, g: DeviceKey, pairing_id: str, accept: bool) -> httpx.Response:
        return await self.post("/pairing/confirm", g, {"pairing_id": pairing_id, "accept": accept})

    async def paired(self) -> tuple[DeviceKey, DeviceKey, dict[str, Any]]:
        """G with a book, J verified (pending), and the session."""
        g, j = await self.founder(), await self.newcomer()
        generated = await self.generate(g)
        response = await self.verify(j, generated["short_code"])
        assert response.status_code == 200, response.text
        return g, j, dict(response.json()["data"])

    async def members(self, device: DeviceKey, book_id: str) -> httpx.Response:
        return await self.client.get(
            f"/api/v1/books/{book_id}/devices", headers=self.auth(device, book_id)
        )


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


async def custom_server(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, **overrides: Any
) -> tuple[Settings, dict[str, Any]]:
    settings = make_settings(backend, tmp_path, request, with_s3=False, **overrides)
    if backend == "production":
        await reset_production(settings)
    return settings, {}


def starter(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Start a server with some settings changed: `async with tuned(**overrides) as (srv, api)`."""

    @contextlib.asynccontextmanager
    async def start(clock: ManualClock | None = None, **overrides: Any) -> AsyncIterator[Any]:
        # Many devices register from one address here: that limit is tested elsewhere.
        limits = overrides.pop("rate_limits", None) or default_limits()
        overrides["rate_limits"] = {**limits, "RATE_LIMIT_REGISTRATION": None}
        settings, _ = await custom_server(backend, tmp_path, request, **overrides)
        async with (
            InProcessServer(settings, clock=clock) as srv,
            httpx.AsyncClient(base_url=srv.url, timeout=15) as client,
        ):
            yield srv, Api(client, clock)

    return start


def limits_with(settings_limits: dict[str, Any], **changes: str | None) -> dict[str, Any]:
    from limits import parse

    out = dict(settings_limits)
    for name, value in changes.items():
        out[name] = parse(value) if value else None
    return out


def default_limits() -> dict[str, Any]:
    return dict(Settings.from_env(environ={}, env_file=None).rate_limits)
