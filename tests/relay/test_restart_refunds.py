"""Deploys do not use up the connect limit: a device whose two sockets a real
`homepocket-relay serve` closes with 1012 again and again (SIGTERM and a start on the
same data, or a lost Redis subscription) reconnects every time, never refused with
4429, though its connects pass the default `RATE_LIMIT_WS_CONNECT` (5 per 10 minutes)
twice over. On the embedded default the counters live in the process and a restart
forgets them too; on Redis they outlive the process, and only the refunds written as
the sockets close keep the device in.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from infra.settings import Settings
from tests.conftest import make_settings, reset_production
from tests.support.keys import DeviceKey
from tests.support.relay import Peer, make_book, open_peer
from tests.support.services import ID_HASH_KEY, ServerProcess, free_port

ROUNDS = 5  # 2 sockets x 5 connects = 10, twice the default limit of 5


def env_of(s: Settings) -> dict[str, str]:
    env = {"ID_HASH_KEY": ID_HASH_KEY, "LOG_LEVEL": "WARNING"}
    if s.database_url:
        env.update(DATABASE_URL=str(s.database_url), REDIS_URL=str(s.redis_url))
    return env  # RATE_LIMIT_WS_CONNECT: the default


async def settings_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    from starlette.datastructures import Secret

    s = make_settings(backend, tmp_path, request, with_s3=False, id_hash_key=Secret(ID_HASH_KEY))
    if backend == "production":
        await reset_production(s)
    return s


async def resume(server: ServerProcess, book_id: str, device: DeviceKey, since: int) -> Peer:
    """A socket that must get its welcome: a refusal fails with its close code."""
    peer = await open_peer(server.ws_url, book_id, device, since=since, welcome=False)
    try:
        first = await peer.recv(timeout=10)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        reason = exc.rcvd.reason if exc.rcvd else None
        raise AssertionError(f"connect refused: {code} {reason}") from None
    assert first["type"] == "welcome", first
    return peer


@pytest.mark.parametrize("backend", ["embedded", "production"])
async def test_restarts_in_a_row_never_refuse_a_device_by_the_connect_limit(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await settings_for(backend, tmp_path, request)
    server = ServerProcess(env_of(s), tmp_path / "data", port=free_port()).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            book_id, (a,) = await make_book(http, s, 1)
            for _ in range(ROUNDS):
                peers = [await resume(server, book_id, a, since=0) for _ in range(2)]
                await asyncio.to_thread(server.stop, signal.SIGTERM)  # a deploy
                assert [(await p.closed())[0] for p in peers] == [1012, 1012]
                await asyncio.to_thread(server.start)
    finally:
        server.stop(signal.SIGKILL)


async def test_lost_subscriptions_in_a_row_never_refuse_a_device_by_the_connect_limit(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The other 1012: the instance's Redis subscription dropped, so it closes its
    sockets (they may have missed ops) and they resume."""
    s = await settings_for("production", tmp_path, request)
    server = ServerProcess(env_of(s), tmp_path / "data", port=free_port()).start()
    redis = aioredis.from_url(str(s.redis_url))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            book_id, (a,) = await make_book(http, s, 1)
            for _ in range(ROUNDS):
                peers = [await resume(server, book_id, a, since=0) for _ in range(2)]
                await redis.client_kill_filter(_type="pubsub")
                assert [(await p.closed(timeout=10))[0] for p in peers] == [1012, 1012]
                await asyncio.sleep(0.5)  # the instance subscribes again
    finally:
        await redis.aclose()
        server.stop(signal.SIGKILL)
