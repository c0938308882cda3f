"""Several instances act as one: real `homepocket-relay serve` processes sharing Redis and
PostgreSQL, devices of one book split across them; graceful shutdown; lost history."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from infra.settings import Settings
from tests.conftest import make_settings, reset_production
from tests.support.relay import make_book, open_peer, payload
from tests.support.services import ID_HASH_KEY, InProcessServer, ServerProcess


@pytest.fixture
async def shared(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    s = make_settings("production", tmp_path, request, with_s3=False)
    await reset_production(s)
    return s


def env_of(s: Settings, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": str(s.database_url),
        "REDIS_URL": str(s.redis_url),
        "ID_HASH_KEY": ID_HASH_KEY,
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@pytest.fixture
def two_instances(shared: Settings, tmp_path: Path) -> Iterator[tuple[ServerProcess, ...]]:
    procs = [ServerProcess(env_of(shared), tmp_path / f"i{i}") for i in range(2)]
    try:
        for proc in procs:
            proc.start()
        yield tuple(procs)
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop(signal.SIGKILL)


async def wait_online(http: httpx.AsyncClient, book_id: str, auth: dict[str, str]) -> set[str]:
    listed = await http.get(f"/api/v1/books/{book_id}/devices", headers=auth)
    return {d["device_id"] for d in listed.json()["data"]["devices"] if d["online"]}


async def test_two_instances_share_ops_presence_and_revocation(
    shared: Settings, two_instances: tuple[ServerProcess, ServerProcess]
) -> None:
    one, two = two_instances
    async with httpx.AsyncClient(base_url=one.url) as h1:
        book_id, (a, b, c) = await make_book(h1, shared, 3)
        other_book, (stranger,) = await make_book(h1, shared, 1)
        pa = await open_peer(one.ws_url, book_id, a)
        pb = await open_peer(two.ws_url, book_id, b)
        assert (await pa.recv_type("presence"))["device_id"] == b.device_id
        pc = await open_peer(two.ws_url, book_id, c)
        assert set(pc.welcome["online"]) == {a.device_id, b.device_id}  # type: ignore[attr-defined]
        ps = await open_peer(one.ws_url, other_book, stranger)
        assert await wait_online(h1, book_id, a.auth()) == {a.device_id, b.device_id, c.device_id}

        # Both instances send at once: seqs are unique, and each socket sees them increasing.
        for i in range(20):
            await pa.op(payload(), id=f"a{i}")
            await pb.op(payload(), id=f"b{i}")
        got_a = [await pa.recv_type("ack", "crdt_operation") for _ in range(40)]
        acks = [m["seq"] for m in got_a if m["type"] == "ack"]
        seen_a = [m["seq"] for m in got_a if m["type"] == "crdt_operation"]
        got_b = [await pb.recv_type("ack", "crdt_operation") for _ in range(40)]
        acks_b = [m["seq"] for m in got_b if m["type"] == "ack"]
        assert sorted(acks + acks_b) == list(range(1, 41))
        seen_c = [(await pc.recv_type("crdt_operation"))["seq"] for _ in range(40)]
        assert seen_c == list(range(1, 41))
        assert seen_a == sorted(acks_b)  # each socket: every other op once, increasing

        # Revoked on instance one, the device's socket on instance two closes within a second.
        started = time.monotonic()
        gone = await h1.delete(f"/api/v1/books/{book_id}/devices/{c.device_id}", headers=a.auth())
        assert gone.status_code == 204
        assert await pc.closed(timeout=2) == (4403, "FORBIDDEN")
        assert time.monotonic() - started < 1.5
        revoked = await pb.recv_type("presence")
        while revoked["status"] != "revoked":
            revoked = await pb.recv_type("presence")
        assert revoked["device_id"] == c.device_id
        await ps.nothing(("crdt_operation", "presence"))  # another book saw none of it
        await pb.close()
        seen = await pa.recv_type("presence")
        while seen["status"] == "revoked":
            seen = await pa.recv_type("presence")
        assert (seen["device_id"], seen["status"]) == (b.device_id, "offline")
        await pa.close()


async def test_dead_instance_devices_go_offline(
    shared: Settings, two_instances: tuple[ServerProcess, ServerProcess]
) -> None:
    one, two = two_instances
    async with httpx.AsyncClient(base_url=one.url) as h1:
        book_id, (a, b) = await make_book(h1, shared, 2)
        pa = await open_peer(one.ws_url, book_id, a)
        await open_peer(two.ws_url, book_id, b)
        assert (await pa.recv_type("presence"))["status"] == "online"
        two.stop(signal.SIGKILL)  # no goodbye
        offline = await pa.recv_type("presence", timeout=15)
        assert (offline["device_id"], offline["status"]) == (b.device_id, "offline")
        assert await wait_online(h1, book_id, a.auth()) == {a.device_id}
        await pa.close()


async def test_sigterm_closes_1012_fast_and_clients_resume_elsewhere(
    shared: Settings, two_instances: tuple[ServerProcess, ServerProcess]
) -> None:
    one, two = two_instances
    async with httpx.AsyncClient(base_url=one.url) as h1:
        book_id, (a, b) = await make_book(h1, shared, 2)
        pa = await open_peer(one.ws_url, book_id, a)
        epoch = pa.welcome["epoch"]  # type: ignore[attr-defined]
        pb = await open_peer(two.ws_url, book_id, b)
        for i in range(5):
            await pa.op(payload(), id=f"t{i}")
        assert [(await pb.recv_type("crdt_operation"))["seq"] for _ in range(5)] == [1, 2, 3, 4, 5]
        started = time.monotonic()
        stopping = asyncio.get_running_loop().run_in_executor(None, two.stop)
        code, _ = await pb.closed(timeout=5)
        assert code == 1012
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit.
        assert await stopping in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
        for i in range(5, 8):
            await pa.op(payload(), id=f"t{i}")
        back = await open_peer(one.ws_url, book_id, b, since=5, epoch=epoch)
        seqs = []
        while (m := await back.recv_type("crdt_operation", "sync_complete", "sync_gap"))[
            "type"
        ] == "crdt_operation":
            seqs.append(m["seq"])
        assert m["type"] == "sync_complete" and seqs == [6, 7, 8]
        await back.close()
        await pa.close()


async def test_flushall_gives_a_new_epoch_and_sync_gap(shared: Settings) -> None:
    async with InProcessServer(shared) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        book_id, (a, b) = await make_book(http, shared, 2)
        pa = await open_peer(srv.ws_url, book_id, a)
        epoch = pa.welcome["epoch"]  # type: ignore[attr-defined]
        for i in range(3):
            await pa.op(id=f"f{i}")
            await pa.recv_type("ack")
        r = aioredis.from_url(str(shared.redis_url))
        await r.flushall()
        await r.aclose()
        await pa.op(id="after")
        ack = await pa.recv_type("ack")
        assert ack["seq"] == 1  # a new history starts
        pb = await open_peer(srv.ws_url, book_id, b, since=3, epoch=epoch)
        assert pb.welcome["epoch"] != epoch  # type: ignore[attr-defined]
        gap = await pb.recv_type("sync_gap")
        assert gap["epoch"] != epoch and gap["resume_seq"] == 0
        assert (await pb.recv_type("crdt_operation"))["seq"] == 1
        assert (await pb.recv_type("sync_complete"))["latest_seq"] == 1
        await pa.close()
        await pb.close()


async def test_embedded_restart_keeps_the_epoch_and_a_new_store_gives_a_gap(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = make_settings("embedded", tmp_path, request)
    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        book_id, (a, b) = await make_book(http, s, 2)
        pa = await open_peer(srv.ws_url, book_id, a)
        epoch = pa.welcome["epoch"]  # type: ignore[attr-defined]
        await pa.op(id="x")
        assert (await pa.recv_type("ack"))["seq"] == 1
        await pa.close()
    async with InProcessServer(s) as srv:  # the same data dir: the same history
        pb = await open_peer(srv.ws_url, book_id, b, since=0)
        assert pb.welcome["epoch"] == epoch  # type: ignore[attr-defined]
        assert (await pb.recv_type("crdt_operation", "sync_gap"))["seq"] == 1
        assert (await pb.recv_type("sync_complete"))["latest_seq"] == 1
        await pb.close()
    (s.data_dir / "backlog.sqlite3").unlink()  # a new store: the history is gone
    async with InProcessServer(s) as srv:
        pb = await open_peer(srv.ws_url, book_id, b, since=1, epoch=epoch)
        gap = await pb.recv_type("sync_gap")
        assert gap["epoch"] != epoch and gap["resume_seq"] == 0
        await pb.close()


@pytest.mark.parametrize("data_kept", [False, True], ids=["data-lost", "data-kept"])
async def test_redis_restart_closes_1012_and_resume_sees_a_new_epoch(
    tmp_path: Path, request: pytest.FixtureRequest, data_kept: bool
) -> None:
    import shutil
    import subprocess

    from tests.support.services import free_port, wait_port

    port = free_port()
    args = [shutil.which("redis-server") or "redis-server", "--port", str(port)]
    args += ["--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    # Kept: every write is on disk, so the restarted Redis has the old counter (and may
    # not have the last writes of a real crash): the new run_id alone marks the change.
    args += (
        ["--appendonly", "yes", "--appendfsync", "always"] if data_kept else ["--appendonly", "no"]
    )

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return proc

    redis_proc = start_redis()
    try:
        s = make_settings(
            "production", tmp_path, request, with_s3=False, redis_url=f"redis://127.0.0.1:{port}/0"
        )
        await reset_production(s)
        async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as http:
            book_id, (a, b) = await make_book(http, s, 2)
            pa = await open_peer(srv.ws_url, book_id, a)
            epoch = pa.welcome["epoch"]  # type: ignore[attr-defined]
            await pa.op(id="before")
            await pa.recv_type("ack")
            redis_proc.terminate()
            redis_proc.wait(10)
            redis_proc = start_redis()  # a new run_id (and, unless kept, everything gone)
            code, _ = await pa.closed(timeout=10)
            assert code == 1012  # the bus dropped: sockets resume rather than miss ops
            # The first write after the restart, before anything else read Redis: already
            # the first seq of a new history.
            body = {"book_id": book_id, "payload": payload(8), "timestamp": int(time.time())}
            sent = await http.post("/api/v1/relay/send", json=body, headers=b.auth())
            assert sent.status_code == 202 and sent.json()["data"]["seq"] == 1
            pb = await open_peer(srv.ws_url, book_id, b, since=1, epoch=epoch)
            gap = await pb.recv_type("sync_gap")
            assert gap["epoch"] != epoch
            assert (await pb.recv_type("crdt_operation"))["seq"] == 1
            await pb.op(id="after")
            assert (await pb.recv_type("ack"))["seq"] == 2
            await pb.close()
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


async def test_hung_redis_refuses_ops_with_an_error_and_recovers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import shutil
    import subprocess

    from tests.support.services import free_port, wait_port

    port = free_port()
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    try:
        s = make_settings(
            "production", tmp_path, request, with_s3=False, redis_url=f"redis://127.0.0.1:{port}/0"
        )
        await reset_production(s)
        limits = dict.fromkeys(s.rate_limits)  # the limiter shares the hung Redis
        s = make_settings(
            "production",
            tmp_path,
            request,
            with_s3=False,
            redis_url=f"redis://127.0.0.1:{port}/0",
            rate_limits=limits,
        )
        async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as http:
            book_id, (a,) = await make_book(http, s, 1)
            pa = await open_peer(srv.ws_url, book_id, a)
            await pa.recv_type("sync_complete")  # the session has read what it needs
            redis_proc.send_signal(signal.SIGSTOP)
            await pa.op(id="stuck")
            error = await pa.recv_type("error", "ack", timeout=10)
            assert (error["type"], error["code"], error["id"]) == (
                "error",
                "SERVICE_UNAVAILABLE",
                "stuck",
            )
            redis_proc.send_signal(signal.SIGCONT)
            await pa.op(id="stuck")  # the client's retry goes through
            ack = await pa.recv_type("ack", timeout=10)
            assert ack["id"] == "stuck"
            await pa.close()
            # A session starting while Redis hangs is closed with "try again later".
            redis_proc.send_signal(signal.SIGSTOP)
            pb = await open_peer(srv.ws_url, book_id, a, welcome=False)
            with pytest.raises(ConnectionClosed) as closed:
                await pb.recv_type("welcome", timeout=30)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                1013,
                "SERVICE_UNAVAILABLE",
            )
    finally:
        redis_proc.send_signal(signal.SIGCONT)
        redis_proc.terminate()
        redis_proc.wait(10)
