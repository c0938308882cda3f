"""Helpers for the photo and snapshot tests: members of fresh books, ops, uploads
through the real URLs, and servers built with the storage capability's test-only knobs."""

from __future__ import annotations

import base64
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import devices_api
from infra.clock import Clock
from infra.context import Capability, Infra
from infra.settings import Settings
from relay import app as relay_app
from storage.app import Runtime, make
from tests.conftest import fresh_settings
from tests.support.keys import DeviceKey
from tests.support.services import InProcessServer


async def member(client: httpx.AsyncClient) -> DeviceKey:
    """A device that just created its own book."""
    device = DeviceKey()
    device.book_id = str(uuid.uuid4())
    response = await client.post(
        "/api/v1/devices",
        json={"public_key": device.public_b64, "book_id": device.book_id},
        headers=device.auth(),
    )
    assert response.status_code == 201, response.text
    return device


async def reserve(
    client: httpx.AsyncClient,
    device: DeviceKey,
    size: int,
    at: float | None = None,
    **extra: Any,
) -> httpx.Response:
    """Ask for an upload URL; `at` signs the token at that time (for a moved clock)."""
    body = {"book_id": device.book_id, "size_bytes": size, **extra}
    return await client.post("/api/v1/photos/upload", json=body, headers=signed(device, at))


def signed(device: DeviceKey, at: float | None) -> dict[str, str]:
    """The device's token, signed at `at` when the server's clock was moved."""
    return device.auth() if at is None else device.auth(iat=at, exp=at + 600)


async def put(client: httpx.AsyncClient, upload: dict[str, Any], data: bytes) -> httpx.Response:
    """PUT exactly as a client must: the given bytes with exactly `upload_headers`."""
    assert upload["upload_method"] == "PUT"
    return await client.put(upload["upload_url"], content=data, headers=upload["upload_headers"])


async def complete(client: httpx.AsyncClient, device: DeviceKey, photo_id: str) -> httpx.Response:
    return await client.post(f"/api/v1/photos/{photo_id}/complete", headers=device.auth())


async def finish(
    client: httpx.AsyncClient,
    reserved: httpx.Response,
    data: bytes,
    id_field: str,
    complete_it: Callable[[str], Awaitable[httpx.Response]],
) -> str:
    """PUT the data through a reserved upload and complete it; its id."""
    assert reserved.status_code == 201, reserved.text
    upload = reserved.json()["data"]
    assert (await put(client, upload, data)).status_code == 200
    done = await complete_it(upload[id_field])
    assert done.status_code == 200, done.text
    return str(upload[id_field])


async def stored_photo(client: httpx.AsyncClient, device: DeviceKey, data: bytes) -> str:
    """Upload and complete one photo; its photo_id."""
    reserved = await reserve(client, device, len(data))
    return await finish(client, reserved, data, "photo_id", partial(complete, client, device))


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


@contextlib.asynccontextmanager
async def storage_server(
    settings: Settings, clock: Clock | None = None, relay: bool = False, **knobs: Any
) -> AsyncIterator[tuple[InProcessServer, httpx.AsyncClient, Runtime]]:
    """The real app (devices + storage, and the relay when snapshots need its backlog)
    with storage's knobs (url_ttl_s, sweep_every_s)."""
    held: list[Runtime] = []

    def storage(infra: Infra) -> Capability:
        cap, runtime = make(infra, **knobs)
        held.append(runtime)
        return cap

    capabilities = [devices_api.build, *([relay_app.build] if relay else []), storage]
    async with (
        InProcessServer(settings, clock=clock, capabilities=capabilities) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=10) as client,
    ):
        yield srv, client, held[0]


async def send_ops(client: httpx.AsyncClient, device: DeviceKey, n: int) -> int:
    """`n` ops through `POST /relay/send`; the last seq."""
    seq = 0
    for _ in range(n):
        payload = base64.b64encode(os.urandom(24)).decode()
        body = {"book_id": device.book_id, "payload": payload, "timestamp": int(time.time())}
        sent = await client.post("/api/v1/relay/send", json=body, headers=device.auth())
        assert sent.status_code == 202, sent.text
        seq = int(sent.json()["data"]["seq"])
    return seq


async def ops_page(
    client: httpx.AsyncClient, device: DeviceKey, since: int = 0, epoch: str | None = None
) -> dict[str, Any]:
    query = f"since={since}&limit=1000" + (f"&epoch={epoch}" if epoch else "")
    got = await client.get(f"/api/v1/books/{device.book_id}/ops?{query}", headers=device.auth())
    assert got.status_code == 200, got.text
    return dict(got.json()["data"])


def snapshots_path(device: DeviceKey, book_id: str | None = None) -> str:
    return f"/api/v1/books/{book_id or device.book_id}/snapshots"


async def reserve_snapshot(
    client: httpx.AsyncClient,
    device: DeviceKey,
    epoch: Any,
    covers_seq: Any,
    size: Any,
    at: float | None = None,
) -> httpx.Response:
    body = {"epoch": epoch, "covers_seq": covers_seq, "size_bytes": size}
    return await client.post(snapshots_path(device), json=body, headers=signed(device, at))


async def complete_snapshot(
    client: httpx.AsyncClient, device: DeviceKey, snapshot_id: str
) -> httpx.Response:
    path = f"{snapshots_path(device)}/{snapshot_id}/complete"
    return await client.post(path, headers=device.auth())


async def stored_snapshot(
    client: httpx.AsyncClient, device: DeviceKey, epoch: str, covers_seq: int, data: bytes
) -> str:
    """Reserve, PUT and complete one snapshot; its snapshot_id."""
    reserved = await reserve_snapshot(client, device, epoch, covers_seq, len(data))
    done = partial(complete_snapshot, client, device)
    return await finish(client, reserved, data, "snapshot_id", done)


async def latest_snapshot(client: httpx.AsyncClient, device: DeviceKey) -> httpx.Response:
    return await client.get(f"{snapshots_path(device)}/latest", headers=device.auth())


# (server, client, storage runtime, the member, its book's epoch, its book_ref)
Booked = tuple[InProcessServer, httpx.AsyncClient, Runtime, DeviceKey, str, str]


@contextlib.asynccontextmanager
async def book_with_ops(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    ops: int,
    clock: Clock | None = None,
    **overrides: Any,
) -> AsyncIterator[Booked]:
    """A server of the test's own, with the relay, and a member whose book holds `ops`
    ops."""
    settings = await fresh_settings(backend, tmp_path, request, **overrides)
    async with storage_server(settings, clock=clock, relay=True) as (srv, client, rt):
        device = await member(client)
        await send_ops(client, device, ops)
        epoch = str((await ops_page(client, device))["epoch"])
        yield srv, client, rt, device, epoch, srv.infra.hasher.book_ref(device.book_id)
