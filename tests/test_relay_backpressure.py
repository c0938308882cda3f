"""A burst of ops through Redis does not cost the relay its subscription: acks wait for
the instance's own subscriber to drain the bus, so Redis never cuts it for exceeding the
pub/sub output-buffer limit (which would close every socket with 1012)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from infra.settings import Settings
from tests.conftest import make_settings, reset_production
from tests.support.relay import Peer, make_book, open_peer, payload
from tests.support.services import ID_HASH_KEY, ServerProcess, free_port, wait_port

BOOKS = 4
OPS = 120  # per socket, sent without waiting for acks
OP_BYTES = 4096
PUBSUB_LIMIT = "pubsub 256kb 0 0"  # far below the burst: about 13 MB of published ops


@pytest.fixture
def redis_url() -> Iterator[str]:
    port = free_port()
    args = [shutil.which("redis-server") or "redis-server", "--port", str(port)]
    args += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


async def drain(peer: Peer, acks: int, ops: int) -> tuple[set[int], int]:
    """Read until `acks` acks and `ops` relayed ops arrived; the acked seqs, ops seen."""
    acked: set[int] = set()
    seen = 0
    while len(acked) < acks or seen < ops:
        message = await peer.recv(timeout=20)
        if message["type"] == "ack":
            acked.add(message["seq"])
        elif message["type"] == "crdt_operation":
            seen += 1
        elif message["type"] == "error":
            raise AssertionError(message)
    return acked, seen


async def test_a_burst_keeps_the_subscription(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    r = aioredis.from_url(redis_url)
    await r.config_set("client-output-buffer-limit", PUBSUB_LIMIT)
    await r.aclose()
    s: Settings = make_settings("production", tmp_path, request, with_s3=False, redis_url=redis_url)
    await reset_production(s)
    env = {
        "DATABASE_URL": str(s.database_url),
        "REDIS_URL": redis_url,
        "ID_HASH_KEY": ID_HASH_KEY,
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_WS_OPS": "off",
        "RATE_LIMIT_REGISTRATION": "off",
    }
    proc = ServerProcess(env, tmp_path / "srv").start()
    try:
        async with httpx.AsyncClient(base_url=proc.url) as http:
            books = [await make_book(http, s, 4) for _ in range(BOOKS)]
        peers = [
            (book_id, await open_peer(proc.ws_url, book_id, device))
            for book_id, devices in books
            for device in devices
        ]
        data = payload(OP_BYTES)

        async def burst(peer: Peer) -> None:
            for i in range(OPS):
                await peer.op(data, id=f"b{i}")

        await asyncio.gather(*(burst(peer) for _, peer in peers))
        results = await asyncio.gather(*(drain(peer, OPS, 3 * OPS) for _, peer in peers))
        pairs = list(zip(peers, results, strict=True))
        for book_id, _ in books:
            every = set().union(*(acked for (b, _), (acked, _) in pairs if b == book_id))
            assert every == set(range(1, 4 * OPS + 1))  # each op sequenced once, all acked
        for _, peer in peers:
            await peer.nothing(("crdt_operation",), wait=0.05)  # none twice, none closed
            await peer.close()
        log = proc.log_path.read_text()
        assert "subscription lost" not in log and "subscriber connection lost" not in log
    finally:
        proc.stop(signal.SIGTERM)
