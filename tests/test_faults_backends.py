"""A database or blob store that hangs or refuses, and clients that never finish their
headers, on real `homepocket-relay serve` processes: PostgreSQL and moto's S3 server
are reached through a fault proxy. Every call answers within about BACKEND_TIMEOUT_S
with a 503 naming the backend and a Retry-After, a handshake closes with 1013, relay
traffic on open sockets goes on, and every call recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from infra.settings import Settings
from tests.conftest import S3_TEST_BUCKET, make_settings, reset_production
from tests.support.faults import FaultProxy
from tests.support.keys import DeviceKey
from tests.support.relay import make_book, open_peer, payload
from tests.support.services import ID_HASH_KEY, ServerProcess

TIMEOUT_S = 1.0
BOUND_S = 3 * TIMEOUT_S  # "within about BACKEND_TIMEOUT_S": generous for a busy machine


def through(url: str, proxy: FaultProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def port_of(url: str) -> int:
    return int(urlsplit(url).port or 0)


@dataclass
class Served:
    settings: Settings  # the real backends (test set-up writes there directly)
    proxy: FaultProxy
    server: ServerProcess


async def serve(env: dict[str, str], tmp_path: Path) -> ServerProcess:
    base = {
        "ID_HASH_KEY": ID_HASH_KEY,
        "LOG_LEVEL": "WARNING",
        "BACKEND_TIMEOUT_S": str(TIMEOUT_S),
        "RATE_LIMIT_WS_CONNECT": "off",
        "RATE_LIMIT_REGISTRATION": "off",
    }
    proc = ServerProcess({**base, **env}, tmp_path / "srv")
    # The proxy runs in this loop: start the process without blocking it.
    await asyncio.get_running_loop().run_in_executor(None, proc.start)
    return proc


@contextlib.asynccontextmanager
async def stopping(proc: ServerProcess) -> AsyncIterator[ServerProcess]:
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop(signal.SIGKILL)


@pytest.fixture
async def pg_behind_proxy(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    s = make_settings("production", tmp_path, request, with_s3=False)
    await reset_production(s)
    async with FaultProxy(port_of(str(s.database_url))) as proxy:
        env = {"DATABASE_URL": through(str(s.database_url), proxy), "REDIS_URL": str(s.redis_url)}
        async with stopping(await serve(env, tmp_path)) as proc:
            yield Served(s, proxy, proc)


@pytest.fixture
async def s3_behind_proxy(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    s = make_settings("production", tmp_path, request)
    await reset_production(s)
    async with FaultProxy(port_of(str(s.s3_endpoint_url))) as proxy:
        env = {
            "DATABASE_URL": str(s.database_url),
            "REDIS_URL": str(s.redis_url),
            "S3_BUCKET": S3_TEST_BUCKET,
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
            "AWS_REGION": "us-east-1",
        }
        async with stopping(await serve(env, tmp_path)) as proc:
            yield Served(s, proxy, proc)


async def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == code
    assert int(response.headers["Retry-After"]) > 0


async def handshake_close(ws_url: str, book_id: str, device: DeviceKey) -> tuple[int, float]:
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        peer = await open_peer(ws_url, book_id, device, welcome=False)
        await peer.recv(timeout=10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, time.monotonic() - started


async def until_ok(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 15
    while True:
        response = await http.get(path, headers=headers)
        if response.status_code == 200:
            return
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.3)


async def test_a_hung_or_refusing_database_fails_fast_and_relay_traffic_goes_on(
    pg_behind_proxy: Served,
) -> None:
    served = pg_behind_proxy
    srv, proxy = served.server, served.proxy
    async with httpx.AsyncClient(base_url=srv.url, timeout=20) as http:
        book_id, (a, b) = await make_book(http, served.settings, 2)
        devices = f"/api/v1/books/{book_id}/devices"
        pa = await open_peer(srv.ws_url, book_id, a)
        pb = await open_peer(srv.ws_url, book_id, b)
        await pa.recv_type("sync_complete")
        await pb.recv_type("sync_complete")

        for fault in ("hang", "refuse"):
            if fault == "hang":
                proxy.hang()
            else:
                await proxy.refuse()
            body = {"book_id": book_id, "payload": payload(), "timestamp": int(time.time())}
            newcomer = DeviceKey()
            calls = {
                "devices": http.get(devices, headers=a.auth()),
                "sync_status": http.get(f"/api/v1/books/{book_id}/sync_status", headers=a.auth()),
                "relay/send": http.post("/api/v1/relay/send", json=body, headers=a.auth()),
                "register": http.post(
                    "/api/v1/devices",
                    json={"public_key": newcomer.public_b64},
                    headers=newcomer.auth(None),
                ),
            }
            for name, call in calls.items():
                response, took = await timed(call)
                assert_unavailable(response, "DATABASE_ERROR")
                assert took < BOUND_S, f"{fault}: {name} took {took:.1f}s"
            code, took = await handshake_close(srv.ws_url, book_id, a)
            assert code == 1013 and took < BOUND_S, (fault, code, took)
            # Sockets already open relay on: the per-op path never touches the database.
            await pa.op(id=f"during-{fault}")
            ack = await pa.recv_type("ack", "error")
            assert ack["type"] == "ack", ack
            assert (await pb.recv_type("crdt_operation"))["seq"] == ack["seq"]
            await asyncio.sleep(2.5)  # a sync-record flush fails meanwhile, harmlessly
            if fault == "hang":
                proxy.resume()
            else:
                await proxy.accept()
            await until_ok(http, devices, a.auth())
            status = await http.get(f"/api/v1/books/{book_id}/sync_status", headers=a.auth())
            assert status.status_code == 200
        # The counts flushed while the database was away were kept for later.
        deadline = time.monotonic() + 10
        while status.json()["data"]["ops_total"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            status = await http.get(f"/api/v1/books/{book_id}/sync_status", headers=a.auth())
        assert status.json()["data"]["ops_total"] == 2
        back = await open_peer(srv.ws_url, book_id, a)
        await back.close()
        await pa.close()
        await pb.close()


async def test_a_hung_blob_store_fails_fast_then_recovers(s3_behind_proxy: Served) -> None:
    served = s3_behind_proxy
    srv, proxy = served.server, served.proxy
    async with httpx.AsyncClient(base_url=srv.url, timeout=40) as http:
        book_id, (a,) = await make_book(http, served.settings, 1)
        begun = await http.post(
            "/api/v1/photos/upload", json={"book_id": book_id, "size_bytes": 5}, headers=a.auth()
        )
        assert begun.status_code == 201, begun.text
        upload = begun.json()["data"]
        put = await http.put(
            upload["upload_url"], content=b"12345", headers=upload["upload_headers"]
        )
        assert put.status_code == 200
        proxy.hang()
        complete = f"/api/v1/photos/{upload['photo_id']}/complete"
        response, took = await timed(http.post(complete, json={}, headers=a.auth()))
        assert_unavailable(response, "S3_ERROR")
        assert took < BOUND_S, f"completing took {took:.1f}s"
        proxy.resume()
        deadline = time.monotonic() + 15
        while (done := await http.post(complete, json={}, headers=a.auth())).status_code != 200:
            assert time.monotonic() < deadline, done.text
            await asyncio.sleep(0.3)
        assert done.json()["data"]["size_bytes"] == 5


async def test_connections_whose_headers_never_finish_are_closed(tmp_path: Path) -> None:
    """Slowloris: half-sent requests, upgrades among them, are closed after 10 s and
    do not pile up; a whole request meanwhile is served."""
    srv = await serve({}, tmp_path)
    async with stopping(srv):
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for i in range(60):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            if i % 2:
                writer.write(
                    b"GET /ws/relay/book HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                )
            else:
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            await writer.drain()
            opened.append((reader, writer))
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=srv.url) as http:
            assert (await http.get("/health")).status_code == 200

        async def closed_by_server(reader: asyncio.StreamReader) -> float:
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 20) == b""
            return time.monotonic() - started

        ends = await asyncio.gather(*(closed_by_server(r) for r, _ in opened))
        assert all(8 < end < 14 for end in ends), (min(ends), max(ends))
        for _, writer in opened:
            writer.close()


async def test_an_unreachable_relay_backend_refuses_a_handshake_with_1013(
    pg_behind_proxy: Served,
) -> None:
    """A handshake against a refusing database is refused as "try again later", the
    server logs no unhandled exception, and the next handshake works once it is back."""
    served = pg_behind_proxy
    srv, proxy = served.server, served.proxy
    async with httpx.AsyncClient(base_url=srv.url, timeout=20) as http:
        book_id, (a,) = await make_book(http, served.settings, 1)
        await proxy.refuse()
        code, _ = await handshake_close(srv.ws_url, book_id, a)
        assert code == 1013
        await proxy.accept()
        deadline = time.monotonic() + 10
        while True:
            try:
                peer = await open_peer(srv.ws_url, book_id, a)
                break
            except (AssertionError, ConnectionClosed, InvalidStatus):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.3)
        await peer.close()
