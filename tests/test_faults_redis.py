"""Redis failing under load, on real processes: two `homepocket-relay serve` instances
reach a private redis-server through a fault proxy that resets, delays, hangs and
refuses their connections, while redis-server itself is frozen (SIGSTOP) at random.
Devices send ops over real WebSockets, retry by id after an error and resend what is
unacked after a reconnect, as the reference client does. Every send gets exactly one
answer, in order; every ack names the op's own seq (checked against `GET ops`); no
acked op is lost. Presence survives a stall longer than the instances' heartbeat TTL.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from infra.settings import Settings
from relay import redis_broker
from tests.conftest import make_settings, reset_production
from tests.support.faults import Device, FaultProxy, private_redis
from tests.support.relay import make_book, open_peer, payload
from tests.support.services import ID_HASH_KEY, ServerProcess

TIMEOUT_S = 1.0  # BACKEND_TIMEOUT_S of the instances under test


@dataclass
class Stack:
    settings: Settings
    redis: subprocess.Popen[bytes]
    proxy: FaultProxy
    instances: tuple[ServerProcess, ServerProcess]


@pytest.fixture
async def stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    with private_redis() as (redis_proc, port):
        async with FaultProxy(port) as proxy:
            s = make_settings(
                "production", tmp_path, request, with_s3=False, redis_url=proxy.url("redis", "/0")
            )
            await reset_production(s)
            env = {
                "DATABASE_URL": str(s.database_url),
                "REDIS_URL": str(s.redis_url),
                "ID_HASH_KEY": ID_HASH_KEY,
                "LOG_LEVEL": "WARNING",
                "BACKEND_TIMEOUT_S": str(TIMEOUT_S),
                "RATE_LIMIT_WS_CONNECT": "off",
                "RATE_LIMIT_WS_OPS": "off",
                "RATE_LIMIT_RELAY_SEND": "off",
            }
            procs = tuple(ServerProcess(env, tmp_path / f"i{i}") for i in range(2))
            try:
                for proc in procs:  # (the proxy runs in this loop: never block it)
                    await asyncio.get_running_loop().run_in_executor(None, proc.start)
                yield Stack(s, redis_proc, proxy, procs)  # type: ignore[arg-type]
            finally:
                redis_proc.send_signal(signal.SIGCONT)
                for proc in procs:
                    if proc.proc is not None and proc.proc.poll() is None:
                        proc.stop(signal.SIGKILL)


async def inject_faults(stack: Stack, rng: random.Random, until: float, log: list[str]) -> None:
    """Random faults, one at a time, until `until` (loop time); everything healed after."""
    loop = asyncio.get_running_loop()
    proxy, redis_proc = stack.proxy, stack.redis
    try:
        while loop.time() < until:
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            kind = rng.choice(["stall", "stall", "reset", "delay", "hang", "refuse"])
            length = rng.uniform(0.3, 2.0)
            log.append(f"{kind} {length:.2f}s")
            if kind == "stall":
                redis_proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(length)
                redis_proc.send_signal(signal.SIGCONT)
            elif kind == "reset":
                proxy.reset()
            elif kind == "delay":
                proxy.delay_s = rng.uniform(0.05, 0.6)
                await asyncio.sleep(length)
                proxy.delay_s = 0.0
            elif kind == "hang":
                proxy.hang()
                await asyncio.sleep(length)
                proxy.resume()
            else:
                await proxy.refuse()
                await asyncio.sleep(min(length, 1.5))
                await proxy.accept()
    finally:
        redis_proc.send_signal(signal.SIGCONT)
        proxy.delay_s = 0.0
        proxy.resume()
        await proxy.accept()


async def test_every_send_gets_one_answer_and_every_ack_its_own_seq(stack: Stack) -> None:
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(2**32))
    print(f"FAULT_SEED={seed}")
    rng = random.Random(seed)
    one, two = stack.instances
    async with httpx.AsyncClient(base_url=one.url, timeout=30) as http:
        book_id, keys = await make_book(http, stack.settings, 7)
        poster, keys = keys[0], keys[1:]
        devices = [
            Device(k, [(one, two)[i % 2].ws_url], book_id, 200, 0.06, random.Random(rng.random()))
            for i, k in enumerate(keys)
        ]
        tasks = [asyncio.ensure_future(d.run()) for d in devices]
        faults: list[str] = []
        loop = asyncio.get_running_loop()
        # Meanwhile, over HTTP: appends retried by id until accepted, and reads of the
        # backlog, on the same pipelined connection as the sockets' batches.
        posted: dict[str, tuple[str, int]] = {}  # id -> (payload, seq)
        until = loop.time() + 12

        async def post_and_read(server: ServerProcess) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                n = 0
                while loop.time() < until:
                    n += 1
                    op_id, data = f"{server.port}-{n}", payload(24)
                    body = {"book_id": book_id, "payload": data, "timestamp": int(time.time())}
                    body["id"] = op_id
                    while True:
                        sent = await client.post(
                            "/api/v1/relay/send", json=body, headers=poster.auth()
                        )
                        if sent.status_code == 202:
                            posted[op_id] = (data, sent.json()["data"]["seq"])
                            break
                        assert sent.status_code == 503, sent.text
                        assert sent.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
                        await asyncio.sleep(0.05)
                    read = await client.get(
                        f"/api/v1/books/{book_id}/ops", params={"limit": 5}, headers=poster.auth()
                    )
                    assert read.status_code in (200, 503), read.text

        posters = [asyncio.ensure_future(post_and_read(s)) for s in (one, two)]
        await inject_faults(stack, rng, until, faults)
        await asyncio.wait_for(asyncio.gather(*posters), 40)
        # Healed: every op ends acked, and then each device stops on a quiet socket.
        deadline = loop.time() + 40
        while loop.time() < deadline and any(
            d.pending or len(d.payloads) < d.target for d in devices
        ):
            await asyncio.sleep(0.2)
        for d in devices:
            d.stopping = True
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        context = f"seed {seed}, faults {faults}"
        for d in devices:
            assert not d.problems, f"{d.problems[:5]} ({context})"
            assert not d.pending, f"{len(d.pending)} ops never acked ({context})"
            assert d.open_unanswered == 0, f"sends left unanswered ({context})"
        # Every ack named the op's own seq.
        stored: dict[int, tuple[str, str]] = {}
        params: dict[str, Any] = {"since": 0, "limit": 1000}
        while True:
            got = await http.get(
                f"/api/v1/books/{book_id}/ops", params=params, headers=keys[0].auth()
            )
            data = got.json()["data"]
            assert data["gap"] is None, f"{context} {data['epoch']} {data['oldest_seq']}"
            for op in data["ops"]:
                stored[op["seq"]] = (op["device_id"], op["payload"])
            if not data["has_more"]:
                break
            params = {"since": data["ops"][-1]["seq"], "epoch": data["epoch"], "limit": 1000}
        for d in devices:
            for op_id, seq in d.acked.items():
                assert stored.get(seq) == (d.key.device_id, d.payloads[op_id]), (
                    f"{op_id} acked with seq {seq}, which holds another op ({context})"
                )
        for op_id, (data, seq) in posted.items():
            assert stored.get(seq) == (poster.device_id, data), (
                f"{op_id} accepted with seq {seq}, which holds another op ({context})"
            )
        acked = sum(len(d.acked) for d in devices)
        assert acked == sum(d.target for d in devices)
        assert len(stored) >= acked  # (an op stored but failed may be stored once more)
        sends = sum(d.sends for d in devices)
        print(f"{acked} ops acked, {sends} sends, {len(posted)} over HTTP; faults: {faults}")


async def test_presence_survives_a_redis_stall_longer_than_the_heartbeat_ttl(
    stack: Stack,
) -> None:
    one, two = stack.instances
    async with httpx.AsyncClient(base_url=one.url, timeout=30) as http:
        book_id, (a, b) = await make_book(http, stack.settings, 2)
        pa = await open_peer(one.ws_url, book_id, a)
        pb = await open_peer(two.ws_url, book_id, b)
        assert (await pa.recv_type("presence"))["status"] == "online"
        stack.redis.send_signal(signal.SIGSTOP)
        await asyncio.sleep(redis_broker.ALIVE_TTL_S + 2)
        stack.redis.send_signal(signal.SIGCONT)
        # Both sockets stayed open: nobody is told otherwise, and both are listed.
        for peer in (pa, pb):
            await peer.nothing(("presence",), wait=redis_broker.ALIVE_TTL_S + 2)
        listed = await http.get(f"/api/v1/books/{book_id}/devices", headers=a.auth())
        online = {d["device_id"] for d in listed.json()["data"]["devices"] if d["online"]}
        assert online == {a.device_id, b.device_id}
        await pa.close()
        await pb.close()


async def test_an_instance_reaped_while_its_sockets_stayed_open_records_them_again(
    stack: Stack,
) -> None:
    one, two = stack.instances
    async with httpx.AsyncClient(base_url=one.url, timeout=30) as http:
        book_id, (a, b) = await make_book(http, stack.settings, 2)
        pa = await open_peer(one.ws_url, book_id, a)
        pb = await open_peer(two.ws_url, book_id, b)
        assert (await pa.recv_type("presence"))["status"] == "online"
        # What a peer's reaper does to an instance it found silent (cut off from Redis).
        r = aioredis.from_url(str(stack.settings.redis_url))
        prefix = redis_broker.PREFIX
        for raw in await r.zrange(redis_broker.INSTANCES, 0, -1):
            instance = raw.decode()
            books = await r.smembers(f"{prefix}books:{instance}")
            for book in books:
                key = f"{prefix}{book.decode()}:s"
                mine = [m for m in await r.zrange(key, 0, -1) if f"|{instance}.".encode() in m]
                if mine and any(m.startswith(b.device_id.encode()) for m in mine):
                    await r.zrem(key, *mine)
                    await r.delete(f"{prefix}books:{instance}")
                    await r.zrem(redis_broker.INSTANCES, instance)
        await r.aclose()
        listed = await http.get(f"/api/v1/books/{book_id}/devices", headers=a.auth())
        assert {d["device_id"] for d in listed.json()["data"]["devices"] if d["online"]} == {
            a.device_id
        }
        back = await pa.recv_type("presence", timeout=redis_broker.BEAT_S * 3)
        assert (back["device_id"], back["status"]) == (b.device_id, "online")
        listed = await http.get(f"/api/v1/books/{book_id}/devices", headers=a.auth())
        online = {d["device_id"] for d in listed.json()["data"]["devices"] if d["online"]}
        assert online == {a.device_id, b.device_id}
        await pa.close()
        await pb.close()


async def test_subscriber_backs_off_until_redis_really_answers(tmp_path: Path) -> None:
    """A proxy that takes connections for a Redis that does not answer: the subscriber
    must not reconnect every 100 ms, nor warn at each attempt."""
    from relay.redis_sub import Subscriber

    with private_redis() as (redis_proc, port):
        async with FaultProxy(port) as proxy:
            lost: list[float] = []
            sub = Subscriber(proxy.url("redis", "/0"), lambda c, d: None, lambda: lost.append(0))
            sub.timeout_s = 0.5  # BACKEND_TIMEOUT_S, short
            await sub.start()
            connects = 0
            original = sub._connect

            async def counted() -> None:
                nonlocal connects
                connects += 1
                await original()

            sub._connect = counted  # type: ignore[method-assign]
            redis_proc.send_signal(signal.SIGSTOP)  # connects succeed, nothing answers
            proxy.reset()
            await asyncio.sleep(6)
            assert lost == [0]
            assert not sub._connected.is_set()  # a bare TCP connect is not a connection
            # 0.1, 0.2, 0.4, 0.8, 1.6, 3.2 s apart (each attempt also waits 0.5 s): a few.
            assert 2 <= connects <= 7, connects
            redis_proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(5.5)
            assert sub._connected.is_set()
            await sub.stop()
