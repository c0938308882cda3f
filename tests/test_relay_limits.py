"""Relay limits on both backends: connect and op rate limits (with the 1012/1013 refund),
the heartbeat dropping a silent peer, and the backlog bounds producing sync_gap."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from limits import parse

from infra.settings import Settings
from tests.conftest import make_settings, reset_production
from tests.support.relay import make_book, open_peer
from tests.support.services import InProcessServer


@pytest.fixture
async def custom(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Any]:
    """A server with settings overrides: `async with custom(**kw) as (srv, http, s)`."""
    import contextlib

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[tuple[InProcessServer, Any, Settings]]:
        limits = overrides.pop("limits", {})
        base = make_settings(backend, tmp_path, request, with_s3=False)
        overrides["rate_limits"] = {**base.rate_limits, **limits}
        s = make_settings(backend, tmp_path, request, with_s3=False, **overrides)
        if backend == "production":
            await reset_production(s)
        async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as http:
            yield srv, http, s

    yield start


async def test_connect_limit_4429_and_server_closes_are_refunded(custom: Any) -> None:
    async with custom(limits={"RATE_LIMIT_WS_CONNECT": parse("2/minute")}) as (srv, http, s):
        book_id, (a,) = await make_book(http, s, 1)
        first = await open_peer(srv.ws_url, book_id, a)
        srv.infra.live.close_all(1012, "SERVER_RESTARTING")  # as on a restart
        assert (await first.closed())[0] == 1012
        await asyncio.sleep(0.2)  # the refund is recorded as the session ends
        for _ in range(2):  # the refunded connect plus the second of the budget
            peer = await open_peer(srv.ws_url, book_id, a)
            await peer.close()
        refused = await open_peer(srv.ws_url, book_id, a, welcome=False)
        code, reason = await refused.closed()
        assert code == 4429
        assert reason is not None and reason.startswith("RATE_LIMIT_EXCEEDED retry_after=")
        assert int(reason.rsplit("=", 1)[1]) > 0


async def test_a_client_closing_with_1012_itself_is_not_refunded(custom: Any) -> None:
    """Only the server's closes are refunded: else a client that closes every socket
    with 1012 would reconnect without limit."""
    async with custom(limits={"RATE_LIMIT_WS_CONNECT": parse("2/minute")}) as (srv, http, s):
        book_id, (a,) = await make_book(http, s, 1)
        for code in (1012, 1013):
            peer = await open_peer(srv.ws_url, book_id, a)
            await peer.ws.close(code)
        await asyncio.sleep(0.2)  # as long as a refund would take to be written
        refused = await open_peer(srv.ws_url, book_id, a, welcome=False)
        assert (await refused.closed())[0] == 4429


async def test_op_limit_refuses_with_an_error_and_keeps_the_socket(custom: Any) -> None:
    async with custom(limits={"RATE_LIMIT_WS_OPS": parse("5/minute")}) as (srv, http, s):
        book_id, (a,) = await make_book(http, s, 1)
        peer = await open_peer(srv.ws_url, book_id, a)
        for i in range(6):
            await peer.op(id=f"r{i}")
        answers = [await peer.recv_type("ack", "error") for _ in range(6)]
        assert [m["type"] for m in answers] == ["ack"] * 5 + ["error"]
        assert (answers[-1]["code"], answers[-1]["id"]) == ("RATE_LIMIT_EXCEEDED", "r5")
        await peer.send(type="ping", timestamp=1)
        assert (await peer.recv_type("pong"))["timestamp"] == 1
        await peer.close()


async def test_silent_peer_is_dropped_and_a_live_one_kept(custom: Any) -> None:
    async with custom(heartbeat_interval_s=0.3, heartbeat_timeout_s=0.9) as (srv, http, s):
        book_id, (a, b) = await make_book(http, s, 2)
        live = await open_peer(srv.ws_url, book_id, b)  # its library answers pings
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws/relay/{book_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {a.token()}\r\n\r\n"
            ).encode()
        )
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        started = time.monotonic()
        opcodes = []
        while True:  # read frames, never answer a ping
            head = await asyncio.wait_for(reader.read(2), 5)
            if not head:
                break
            opcodes.append(head[0] & 0x0F)
            size = head[1] & 0x7F
            if size == 126:
                size = int.from_bytes(await reader.readexactly(2), "big")
            await reader.readexactly(size)
            if opcodes[-1] == 0x8:
                break
        assert 0x9 in opcodes  # the server pinged
        assert time.monotonic() - started < 3
        writer.close()
        await live.ws.ping()
        await live.op()
        assert (await live.recv_type("ack"))["seq"] == 1
        await live.close()


async def test_backlog_bounds_and_pure_relay(custom: Any) -> None:
    async with custom(backlog_max_ops=3) as (srv, http, s):
        book_id, (a, b) = await make_book(http, s, 2)
        pa = await open_peer(srv.ws_url, book_id, a)
        epoch = pa.welcome["epoch"]
        for i in range(5):
            await pa.op(id=f"k{i}")
            await pa.recv_type("ack")
        pb = await open_peer(srv.ws_url, book_id, b, since=1, epoch=epoch)
        gap = await pb.recv_type("sync_gap")
        assert (gap["oldest_seq"], gap["resume_seq"]) == (3, 2)
        assert [(await pb.recv_type("crdt_operation"))["seq"] for _ in range(3)] == [3, 4, 5]
        await pb.close()
        resumed = await open_peer(srv.ws_url, book_id, b, since=2, epoch=epoch)
        got = await resumed.recv_type("crdt_operation", "sync_gap")
        assert got["seq"] == 3  # exactly at the edge: no gap
        await resumed.close()
        await pa.close()
    async with custom(backlog_max_ops=0) as (srv, http, s):
        book_id, (a, b) = await make_book(http, s, 2)
        pa = await open_peer(srv.ws_url, book_id, a)
        pb = await open_peer(srv.ws_url, book_id, b)
        await pa.op()
        assert (await pb.recv_type("crdt_operation"))["seq"] == 1  # live still flows
        status = await http.get(f"/api/v1/books/{book_id}/sync_status", headers=a.auth())
        backlog = status.json()["data"]["backlog"]
        assert (backlog["retained_ops"], backlog["oldest_seq"]) == (0, 2)
        late = await open_peer(srv.ws_url, book_id, b, since=0)
        gap = await late.recv_type("sync_gap")
        assert gap["resume_seq"] == 1
        assert (await late.recv_type("sync_complete", "crdt_operation"))["type"] == "sync_complete"
        for p in (pa, pb, late):
            await p.close()


async def test_allowed_origin_may_connect(custom: Any) -> None:
    async with custom(allowed_origins=("https://app.example",)) as (srv, http, s):
        book_id, (a,) = await make_book(http, s, 1)
        peer = await open_peer(srv.ws_url, book_id, a, headers={"Origin": "https://app.example"})
        assert (await peer.recv_type("sync_complete"))["latest_seq"] == 0
        await peer.close()


async def test_sync_records_are_batched_not_written_per_op(custom: Any) -> None:
    from infra.db import open_database

    async with custom() as (srv, http, s):
        book_id, (a,) = await make_book(http, s, 1)
        book_ref = srv.infra.hasher.book_ref(book_id)
        peer = await open_peer(srv.ws_url, book_id, a)
        for i in range(5):
            await peer.op(id=f"c{i}")
        for _ in range(5):
            await peer.recv_type("ack")
        db = await open_database(s.database_url, s.data_dir)
        try:
            sql = "SELECT ops_total, bytes_total, last_op_at FROM sync_records WHERE book_ref = $1"
            assert await db.fetchrow(sql, book_ref) is None  # nothing written per message
            deadline = time.monotonic() + 5
            row = None
            while row is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                row = await db.fetchrow(sql, book_ref)
            assert row is not None and row["ops_total"] == 5 and row["bytes_total"] > 0
            assert abs(row["last_op_at"] - time.time()) < 10
        finally:
            await db.close()
        await peer.close()
