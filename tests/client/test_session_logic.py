"""The relay session's decisions, against a scripted socket peer on loopback: what it
sends on connect, that retries reuse the op id, that it reconnects after 1012 and stops
for good after 4403 and 4410, and that a sync_gap leads to a full-state request.

The scripted peer is not the relay (the end-to-end tests use the real one); it plays
fixed answers so each decision of the client is checked on its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from client import crypto
from client.device import Device
from client.ledger import KIND_STATE_REQUEST, Ledger, decode_op
from client.session import Backoff

BOOK = "book-0123456789abcdef"
Script = Callable[[ServerConnection, int], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, list[ServerConnection]]]:
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        await script(ws, len(connections))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}", connections


def send(ws: ServerConnection, **msg: Any) -> Awaitable[None]:
    return ws.send(json.dumps(msg))


async def eventually(predicate: Callable[[], bool], within_s: float = 5) -> None:
    """For conditions outside the device (what the scripted peer received)."""
    async with asyncio.timeout(within_s):
        while not predicate():
            await asyncio.sleep(0.02)


def device(url: str, tmp_path: Path) -> Device:
    d = Device.open(tmp_path / "d", url, "d", backoff=Backoff(0.02, 0.1))
    d.join_book(BOOK, crypto.new_book_key())
    return d


async def test_ops_are_retried_with_the_same_id_after_1012(tmp_path: Path) -> None:
    received: list[list[str]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        ids: list[str] = []
        received.append(ids)
        await send(ws, type="welcome", epoch="E", latest_seq=0, online=[])
        await send(ws, type="sync_complete", latest_seq=0)
        async for raw in ws:
            msg = json.loads(raw)
            ids.append(msg["id"])
            if n == 1 and len(ids) == 2:
                await ws.close(1012)  # restarting: nothing acked on this connection
                return
            if n == 2:
                await send(ws, type="ack", id=msg["id"], seq=len(ids), relay_timestamp=0)

    async with scripted(script) as (url, connections):
        d = device(url, tmp_path)
        try:
            d.add_entry(-1, "one")
            d.add_entry(-2, "two")  # queued before the socket exists
            d.go_online()
            await eventually(lambda: len(connections) == 2 and not d.state.outbox)
            assert received[1] == received[0]  # the same ids, so the relay can dedupe
            assert d.state.position.seq == 2
            path = connections[1].request.path if connections[1].request else ""
            assert path == f"/ws/relay/{BOOK}?since=0"
            headers = connections[1].request.headers if connections[1].request else {}
            assert headers["Authorization"].startswith("Bearer ")
        finally:
            await d.close()


@pytest.mark.parametrize(("code", "reason"), [(4403, "revoked"), (4410, "book erased")])
async def test_final_close_codes_stop_reconnecting(tmp_path: Path, code: int, reason: str) -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await send(ws, type="welcome", epoch="E", latest_seq=0, online=[])
        await ws.close(code, "FORBIDDEN" if code == 4403 else "BOOK_ERASED")

    async with scripted(script) as (url, connections):
        d = device(url, tmp_path)
        try:
            session = d.go_online()
            await d.wait_until(lambda: not session.running, 5)
            await asyncio.sleep(0.3)  # several backoff periods: no new connection
            assert len(connections) == 1
            assert session.stopped_reason is not None and reason in session.stopped_reason
        finally:
            await d.close()


async def test_sync_gap_without_snapshot_asks_peers_for_their_state(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        await send(ws, type="welcome", epoch="E2", latest_seq=9, online=[])
        await send(ws, type="sync_gap", epoch="E2", oldest_seq=8, resume_seq=7)
        await send(ws, type="sync_complete", latest_seq=9)
        async for raw in ws:
            sent.append(json.loads(raw))

    async with scripted(script) as (url, _):
        d = device(url, tmp_path)
        d.state.position.epoch, d.state.position.seq = "E1", 3
        d.add_entry(-1, "before")
        try:
            d.go_online()
            await eventually(lambda: len(sent) == 2)
            assert (d.state.position.epoch, d.state.position.seq) == ("E2", 7)
            kinds = [
                decode_op(
                    crypto.open_sealed(
                        d.book_key, base64.b64decode(m["payload"]), crypto.op_aad(BOOK)
                    )
                )[0]
                for m in sent
            ]
            assert KIND_STATE_REQUEST in kinds
        finally:
            await d.close()


async def test_a_peers_state_request_is_answered_once_with_our_state(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    key = crypto.new_book_key()

    async def script(ws: ServerConnection, n: int) -> None:
        await send(ws, type="welcome", epoch="E", latest_seq=2, online=[])
        for seq in (1, 2):  # two requests in the replay: one answer is enough
            plain = bytes([KIND_STATE_REQUEST]) + Ledger().full_state()  # a blank peer
            payload = crypto.seal(key, plain, crypto.op_aad(BOOK))
            await send(
                ws,
                type="crdt_operation",
                seq=seq,
                device_id="ab" * 16,
                timestamp=0,
                relay_timestamp=0,
                payload=base64.b64encode(payload).decode(),
            )
        await send(ws, type="sync_complete", latest_seq=2)
        async for raw in ws:
            sent.append(json.loads(raw))

    async with scripted(script) as (url, _):
        d = Device.open(tmp_path / "d", url, "d", backoff=Backoff(0.02, 0.1))
        d.join_book(BOOK, key)
        d.ledger.add_entry(-5, "known only here", d.device_id)
        try:
            d.go_online()
            await eventually(lambda: len(sent) == 1)
            await asyncio.sleep(0.2)
            assert len(sent) == 1
            kind, update = decode_op(
                crypto.open_sealed(key, base64.b64decode(sent[0]["payload"]), crypto.op_aad(BOOK))
            )
            assert kind != KIND_STATE_REQUEST and len(update) > 20
            assert d.state.position.seq == 2
        finally:
            await d.close()
