"""Relay test helpers: books with several member devices, and real WebSocket peers."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections import deque
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from infra.db import open_database
from infra.ids import IdHasher
from infra.members import Members
from infra.settings import Settings, resolve_id_hash_key
from tests.support.asyncapi import check_server_message
from tests.support.keys import DeviceKey


def new_book_id() -> str:
    return str(uuid.uuid4())


def payload(size: int = 32) -> str:
    return base64.b64encode(os.urandom(size)).decode()


async def register(client: httpx.AsyncClient, device: DeviceKey, book_id: str | None) -> None:
    body: dict[str, Any] = {"public_key": device.public_b64}
    if book_id is not None:
        body["book_id"] = book_id
    response = await client.post("/api/v1/devices", json=body, headers=device.auth(book_id))
    assert response.status_code in (200, 201), response.text


async def make_book(
    client: httpx.AsyncClient, settings: Settings, n: int = 2
) -> tuple[str, list[DeviceKey]]:
    """A book with `n` member devices: the first creates it, the others join as members
    (what pairing's confirm does, written straight to the metadata store)."""
    book_id = new_book_id()
    devices = [DeviceKey(book_id=book_id) for _ in range(n)]
    await register(client, devices[0], book_id)
    book_ref = IdHasher(str(resolve_id_hash_key(settings))).book_ref(book_id)
    db = await open_database(settings.database_url, settings.data_dir)
    try:
        members = Members(db)
        for device in devices[1:]:
            await register(client, device, None)
            assert await members.add_pending(device.device_id, book_ref, 100)
            assert await members.promote(device.device_id, book_ref)
    finally:
        await db.close()
    return book_id, devices


class Peer:
    """One relay socket: messages split out of JSON-lines frames, read with timeouts."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buffer: deque[dict[str, Any]] = deque()
        self.frames = 0

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        while not self.buffer:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            assert isinstance(frame, str)
            self.frames += 1
            for line in frame.split("\n"):
                if line:
                    message = orjson.loads(line)
                    check_server_message(message)  # every message matches docs/asyncapi.yaml
                    self.buffer.append(message)
        return self.buffer.popleft()

    async def recv_type(self, *types: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message of one of `types`, skipping others (presence and the like)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] in types:
                return message

    async def nothing(
        self, types: tuple[str, ...] = ("crdt_operation",), wait: float = 0.3
    ) -> None:
        """No message of these types arrives within `wait` seconds."""
        try:
            message = await self.recv_type(*types, timeout=wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {message['type']}")

    async def send(self, **message: Any) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def op(self, data: str | None = None, id: str | None = None, **extra: Any) -> None:
        message: dict[str, Any] = {
            "type": "crdt_operation",
            "payload": data or payload(),
            "timestamp": int(time.time()),
            **extra,
        }
        if id is not None:
            message["id"] = id
        await self.send(**message)

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        """Read until the server closes; the close code and reason."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, None)
        raise AssertionError("socket still open")

    async def close(self) -> None:
        await self.ws.close()


async def open_peer(
    ws_url: str,
    book_id: str,
    device: DeviceKey,
    *,
    since: int | None = None,
    epoch: str | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    query: str = "",
    welcome: bool = True,
) -> Peer:
    params = []
    if since is not None:
        params.append(f"since={since}")
    if epoch is not None:
        params.append(f"epoch={epoch}")
    if query:
        params.append(query)
    url = f"{ws_url}/ws/relay/{book_id}" + ("?" + "&".join(params) if params else "")
    all_headers = {} if subprotocols else {"Authorization": "Bearer " + (token or device.token())}
    all_headers.update(headers or {})
    ws = await connect(
        url,
        additional_headers=all_headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        compression=None,
        max_size=None,
        open_timeout=10,
        ping_interval=None,
    )
    peer = Peer(ws)
    if welcome:
        first = await peer.recv()
        assert first["type"] == "welcome", first
        peer.welcome = first  # type: ignore[attr-defined]
    return peer
