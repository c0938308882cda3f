"""What the relay survives: two `homepocket-relay serve` instances on Redis, PostgreSQL
and an S3 server, each backend reached through a fault proxy, while devices send ops
(retrying by id after an error, resending what is unacked after a reconnect). Drives
one fault after another and prints, for each, what held:

  redis-stall      redis-server frozen (SIGSTOP) for longer than the heartbeat TTL
  redis-reset      every Redis connection cut at once
  postgres-hang    connections accepted, nothing answered
  postgres-refuse  connections refused
  s3-hang          the S3 endpoint takes connections and never answers
  kill-9           one instance killed without goodbye; its devices move over
  slowloris        200 half-sent upgrade requests

and at the end: every op acked, every ack the op's own seq in GET ops, every send
answered once, no unhandled exception in either server's log.

Run from the repository root with the test environment (.venv, PostgreSQL and Redis
installed, as scripts/test prepares them):

    .venv/bin/python scripts/faults.py [--seed N] [--timeout-s 1]

Exit status 0 when every fault passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from starlette.datastructures import Secret
from websockets.exceptions import ConnectionClosed

from infra.settings import Settings
from relay import redis_broker
from tests.support.faults import Device, FaultProxy, private_redis
from tests.support.keys import DeviceKey
from tests.support.relay import make_book, open_peer
from tests.support.services import (
    ID_HASH_KEY,
    ServerProcess,
    moto_s3,
    postgres_database,
    unhandled_errors,
)

BUCKET = "homepocket-faults"
Check = Callable[[], Awaitable[str]]


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.timeout_s: float = args.timeout_s
        self.bound_s = 3 * self.timeout_s
        self.rng = random.Random(args.seed)
        self.results: list[tuple[str, bool, str]] = []

    async def fault(self, name: str, check: Check) -> None:
        started = time.monotonic()
        try:
            detail = await check()
            ok = True
        except AssertionError as exc:
            detail, ok = f"FAILED: {exc}", False
        except Exception as exc:
            detail, ok = f"FAILED: {type(exc).__name__}: {exc}", False
        took = time.monotonic() - started
        self.results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name:<16} {took:5.1f}s  {detail}", flush=True)


async def quick_503(call: Awaitable[httpx.Response], code: str, bound_s: float) -> float:
    started = time.monotonic()
    response = await call
    took = time.monotonic() - started
    assert response.status_code == 503, f"{response.status_code} {response.text[:120]}"
    assert response.json()["error"]["code"] == code, response.text[:120]
    assert "Retry-After" in response.headers, "no Retry-After"
    assert took < bound_s, f"answered after {took:.1f}s"
    return took


async def handshake_code(ws_url: str, book_id: str, device: DeviceKey) -> int:
    try:
        peer = await open_peer(ws_url, book_id, device, welcome=False)
        await peer.recv(timeout=10)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else -1
    return 0


async def until_ok(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> float:
    started = time.monotonic()
    while (await http.get(path, headers=headers)).status_code != 200:
        assert time.monotonic() - started < 20, "did not recover within 20 s"
        await asyncio.sleep(0.3)
    return time.monotonic() - started


async def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    run = Run(args)
    print(f"seed {args.seed}, BACKEND_TIMEOUT_S={run.timeout_s}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="hp-faults-") as tmp,
        private_redis() as (redis_proc, redis_port),
        postgres_database() as pg_url,
        moto_s3() as s3_url,
    ):
        import boto3

        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.close()
        from urllib.parse import urlsplit

        pg = urlsplit(pg_url)
        async with (
            FaultProxy(redis_port) as redis_proxy,
            FaultProxy(int(pg.port or 5432)) as pg_proxy,
            FaultProxy(int(urlsplit(s3_url).port or 80)) as s3_proxy,
        ):
            user = pg.netloc.rsplit("@", 1)[0] + "@" if "@" in pg.netloc else ""
            env = {
                "DATABASE_URL": f"postgresql://{user}127.0.0.1:{pg_proxy.port}{pg.path}",
                "REDIS_URL": redis_proxy.url("redis", "/0"),
                "S3_BUCKET": BUCKET,
                "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_proxy.port}",
                "AWS_REGION": "us-east-1",
                "ID_HASH_KEY": ID_HASH_KEY,
                "LOG_LEVEL": "WARNING",
                "BACKEND_TIMEOUT_S": str(run.timeout_s),
                "RATE_LIMIT_WS_CONNECT": "off",
                "RATE_LIMIT_WS_OPS": "off",
                "RATE_LIMIT_REGISTRATION": "off",
                "RATE_LIMIT_PHOTO_UPLOAD": "off",
            }
            loop = asyncio.get_running_loop()
            servers = [ServerProcess(env, Path(tmp) / f"i{i}") for i in range(2)]
            try:
                for server in servers:
                    await loop.run_in_executor(None, server.start)
                return await drive(
                    run, servers, redis_proc, redis_proxy, pg_proxy, s3_proxy, pg_url
                )
            finally:
                redis_proc.send_signal(signal.SIGCONT)
                for server in servers:
                    if server.proc is not None and server.proc.poll() is None:
                        server.stop(signal.SIGKILL)


async def drive(
    run: Run,
    servers: list[ServerProcess],
    redis_proc: Any,
    redis_proxy: FaultProxy,
    pg_proxy: FaultProxy,
    s3_proxy: FaultProxy,
    pg_url: str,
) -> int:
    one, two = servers
    settings = Settings(database_url=pg_url, id_hash_key=Secret(ID_HASH_KEY))
    async with httpx.AsyncClient(base_url=one.url, timeout=30) as http:
        book_id, keys = await make_book(http, settings, 5)
        watcher, senders = keys[0], keys[1:]
        auth = watcher.auth()
        devices_path = f"/api/v1/books/{book_id}/devices"
        devices = [
            Device(
                k,
                [servers[i % 2].ws_url, servers[1 - i % 2].ws_url],
                book_id,
                10**6,
                0.1,
                random.Random(run.rng.random()),
            )
            for i, k in enumerate(senders)
        ]
        tasks = [asyncio.ensure_future(d.run()) for d in devices]
        await asyncio.sleep(2)

        async def redis_stall() -> str:
            watch = await open_peer(one.ws_url, book_id, watcher)
            redis_proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(redis_broker.ALIVE_TTL_S + 2)
            redis_proc.send_signal(signal.SIGCONT)
            before = sum(len(d.acked) for d in devices)
            await asyncio.sleep(redis_broker.ALIVE_TTL_S + 2)
            offline = []
            with contextlib.suppress(TimeoutError):
                while True:
                    m = await watch.recv_type("presence", timeout=0.5)
                    if m["status"] == "offline":
                        offline.append(m["device_id"])
            await watch.close()
            assert not offline, f"{len(offline)} devices announced offline"
            after = sum(len(d.acked) for d in devices)
            assert after > before, "no op acked after the stall"
            return (
                f"{after - before} ops acked in the {redis_broker.ALIVE_TTL_S + 2} s after; "
                "no device announced offline"
            )

        async def redis_reset() -> str:
            before = sum(len(d.acked) for d in devices)
            redis_proxy.reset()
            await asyncio.sleep(4)
            after = sum(len(d.acked) for d in devices)
            assert after > before, "no op acked after the reset"
            return f"{after - before} ops acked in the 4 s after"

        async def postgres(kind: str) -> str:
            if kind == "hang":
                pg_proxy.hang()
            else:
                await pg_proxy.refuse()
            try:
                before = sum(len(d.acked) for d in devices)
                took = await quick_503(
                    http.get(devices_path, headers=auth), "DATABASE_ERROR", run.bound_s
                )
                code = await handshake_code(one.ws_url, book_id, watcher)
                assert code == 1013, f"handshake closed with {code}"
                await asyncio.sleep(2)
                moved = sum(len(d.acked) for d in devices) - before
                assert moved > 0, "relay traffic stopped"
            finally:
                if kind == "hang":
                    pg_proxy.resume()
                else:
                    await pg_proxy.accept()
            back = await until_ok(http, devices_path, auth)
            return (
                f"503 DATABASE_ERROR in {took:.1f}s, handshake 1013, {moved} ops acked "
                f"meanwhile, back in {back:.1f}s"
            )

        async def s3_hang() -> str:
            begun = await http.post(
                "/api/v1/photos/upload", json={"book_id": book_id, "size_bytes": 3}, headers=auth
            )
            assert begun.status_code == 201, begun.text[:120]
            up = begun.json()["data"]
            put = await http.put(up["upload_url"], content=b"abc", headers=up["upload_headers"])
            assert put.status_code == 200, put.status_code
            complete = f"/api/v1/photos/{up['photo_id']}/complete"
            s3_proxy.hang()
            try:
                took = await quick_503(
                    http.post(complete, json={}, headers=auth), "S3_ERROR", run.bound_s
                )
            finally:
                s3_proxy.resume()
            started = time.monotonic()
            while (await http.post(complete, json={}, headers=auth)).status_code != 200:
                assert time.monotonic() - started < 20, "did not recover"
                await asyncio.sleep(0.3)
            return f"503 S3_ERROR in {took:.1f}s, completed {time.monotonic() - started:.1f}s after"

        async def kill_9() -> str:
            on_two = {d.key.device_id for d in devices if d.ws_urls[0] == two.ws_url}
            two.stop(signal.SIGKILL)
            before = sum(len(d.acked) for d in devices)
            # The dead instance is reaped within the heartbeat TTL and a few beats; its
            # devices have moved to the other instance meanwhile.
            await asyncio.sleep(redis_broker.ALIVE_TTL_S + 3 * redis_broker.BEAT_S)
            listed = (await http.get(devices_path, headers=auth)).json()["data"]["devices"]
            online = {d["device_id"] for d in listed if d["online"]}
            missing = {d.key.device_id for d in devices} - online
            assert not missing, f"{len(missing)} connected devices listed offline"
            after = sum(len(d.acked) for d in devices)
            assert after > before, "no op acked after the kill"
            return (
                f"{len(on_two)} devices moved to the other instance and are listed online; "
                f"{after - before} ops acked since"
            )

        async def slowloris() -> str:
            started = time.monotonic()
            held = []
            for _ in range(200):
                reader, writer = await asyncio.open_connection("127.0.0.1", one.port)
                writer.write(b"GET /ws/relay/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                held.append((reader, writer))
            ok = (await http.get("/health")).status_code == 200

            async def closed(reader: asyncio.StreamReader) -> float:
                with contextlib.suppress(ConnectionResetError):
                    await asyncio.wait_for(reader.read(), 20)
                return time.monotonic() - started

            ends = await asyncio.gather(*(closed(r) for r, _ in held))
            for _, writer in held:
                writer.close()
            assert ok, "the server stopped serving"
            assert max(ends) < 14, f"the last closed after {max(ends):.1f}s"
            return f"200 closed by the server after {min(ends):.1f}-{max(ends):.1f}s"

        await run.fault("redis-stall", redis_stall)
        await run.fault("redis-reset", redis_reset)
        await run.fault("postgres-hang", lambda: postgres("hang"))
        await run.fault("postgres-refuse", lambda: postgres("refuse"))
        await run.fault("s3-hang", s3_hang)
        await run.fault("kill-9", kill_9)
        await run.fault("slowloris", slowloris)

        async def ledger() -> str:
            deadline = time.monotonic() + 30
            for d in devices:
                d.target = len(d.payloads)  # no new ops; what is pending gets acked
            while time.monotonic() < deadline and any(d.pending for d in devices):
                await asyncio.sleep(0.3)
            for d in devices:
                d.stopping = True
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
            stored: dict[int, tuple[str, str]] = {}
            params: dict[str, Any] = {"since": 0, "limit": 1000}
            while True:
                got = (
                    await http.get(f"/api/v1/books/{book_id}/ops", params=params, headers=auth)
                ).json()["data"]
                stored.update({o["seq"]: (o["device_id"], o["payload"]) for o in got["ops"]})
                if not got["has_more"]:
                    break
                params = {"since": got["ops"][-1]["seq"], "epoch": got["epoch"], "limit": 1000}
            problems = [p for d in devices for p in d.problems]
            assert not problems, problems[:3]
            unacked = sum(len(d.pending) for d in devices)
            assert unacked == 0, f"{unacked} ops never acked"
            wrong = [
                op_id
                for d in devices
                for op_id, seq in d.acked.items()
                if stored.get(seq) != (d.key.device_id, d.payloads[op_id])
            ]
            assert not wrong, f"{len(wrong)} acks name another op's seq"
            sends = sum(d.sends for d in devices)
            acked = sum(len(d.acked) for d in devices)
            return f"{acked} ops acked, each at its own seq; {sends} sends, each answered once"

        await run.fault("ledger", ledger)

        async def logs() -> str:
            found = [line for s in servers for line in unhandled_errors(s.log())]
            assert not found, found[0][:200]
            return "no unhandled exception in either server"

        await run.fault("server-logs", logs)
    failed = [name for name, ok, _ in run.results if not ok]
    print(f"{len(run.results) - len(failed)}/{len(run.results)} passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=random.randrange(2**32))
    parser.add_argument("--timeout-s", type=float, default=1.0, help="BACKEND_TIMEOUT_S")
    sys.exit(asyncio.run(main(parser.parse_args())))
