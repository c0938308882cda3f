"""Redis's CPU per op of the Redis broker's batched append, without sockets.

At saturation the Redis figure of `run.py` is bounded by the core the generator shares
with redis-server (bench/README.md), so what redis-server spends per op weighs on it
directly. This drives `RedisBroker.append_then` in process, shaped like that workload
(50 books of 4 devices, batches of 250 ops of 1 KiB payloads, every op with a client
id, ops spread over the devices at random), against a private redis-server with a
subscriber on every book, and prints redis-server's CPU time (`INFO cpu`) and the wall
time per op. Each repeat starts a new redis-server, as each round of `run.py` does.

    .venv/bin/python bench/redis_append.py [--batches 300] [--repeats 3] [--max-ops N]

From the repository root; needs `redis-server` and `taskset` on the path. The broker
runs on the relay's core of `run.py` and redis-server where `run.py` puts it (core 1,
or `BENCH_REDIS_CORES`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import secrets
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import SERVER_CORE, start_redis  # noqa: E402
from relay.broker import Appended, BacklogLimits, NewOp  # noqa: E402
from relay.redis_broker import RedisBroker  # noqa: E402

BOOKS, DEVICES, BATCH, WARM_BATCHES = 50, 4, 250, 40


class Counting:
    """A sink that counts what the bus delivered."""

    def __init__(self) -> None:
        self.delivered = 0

    def on_op(self, *_: object) -> None:
        self.delivered += 1

    def on_ops(self, book_ref: str, seq: int, origins: list[str], lines: list[str]) -> None:
        self.delivered += len(lines)

    def on_control(self, *_: object) -> None:
        return None

    def on_bus_lost(self) -> None:
        raise SystemExit("the subscription dropped")


async def one_run(batches: int, max_ops: int) -> tuple[float, float, int]:
    """(redis CPU us per op, wall us per op, ops) for `batches` batches after a warm-up."""
    server, port = start_redis(Path(os.devnull))
    url = f"redis://127.0.0.1:{port}/0"
    try:
        limits = BacklogLimits(max_ops, 1 << 30, 30 * 86400, 1 << 40)
        sink = Counting()
        broker = RedisBroker(lambda: aioredis.from_url(url), url, limits, time.time)
        probe = aioredis.from_url(url)
        await broker.start(sink)
        try:
            return await drive(broker, probe, sink, batches)
        finally:
            await broker.stop()
            await broker._r.aclose()
            await probe.aclose()
    finally:
        server.terminate()
        server.wait()


async def drive(
    broker: RedisBroker, probe: aioredis.Redis, sink: Counting, batches: int
) -> tuple[float, float, int]:
    books = [secrets.token_hex(16) for _ in range(BOOKS)]
    devices = {b: [secrets.token_hex(16) for _ in range(DEVICES)] for b in books}
    for b in books:
        await broker.listen(b)
    payload = base64.b64encode(os.urandom(1024)).decode()
    loop = asyncio.get_running_loop()
    sent = 0

    async def batch() -> None:
        nonlocal sent
        answers: list[asyncio.Future[Appended | Exception]] = []
        now = int(time.time())
        for i in range(BATCH):
            b = books[i % BOOKS]
            device = random.choice(devices[b])
            sent += 1
            op = NewOp(device, f"op-{sent}", payload, now, f"{broker.instance}.{i}", now)
            answer: asyncio.Future[Appended | Exception] = loop.create_future()
            await broker.append_then(b, op, answer.set_result)  # waits while the bus is full
            answers.append(answer)
        try:
            results = await asyncio.wait_for(asyncio.gather(*answers), 30)
        except TimeoutError:
            raise SystemExit("a batch was not answered within 30 s") from None
        for result in results:
            if not isinstance(result, Appended) or result.duplicate:
                raise SystemExit(f"unexpected answer {result!r}")

    async def redis_cpu() -> float:
        info = await probe.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    for _ in range(WARM_BATCHES):
        await batch()
    cpu0, wall0, ops0 = await redis_cpu(), time.perf_counter(), sent
    for _ in range(batches):
        await batch()
    cpu1, wall1 = await redis_cpu(), time.perf_counter()
    for _ in range(100):  # every op relayed back to this subscriber, once
        if sink.delivered >= sent:
            break
        await asyncio.sleep(0.02)
    if sink.delivered != sent:
        raise SystemExit(f"{sink.delivered} of {sent} ops delivered")
    ops = sent - ops0
    return 1e6 * (cpu1 - cpu0) / ops, 1e6 * (wall1 - wall0) / ops, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-ops", type=int, default=10_000, help="BACKLOG_MAX_OPS")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(SERVER_CORE)})
    print(
        f"{BOOKS} books of {DEVICES} devices, batches of {BATCH} ops, "
        f"{args.batches} batches after {WARM_BATCHES} to warm up, max ops {args.max_ops}"
    )
    for n in range(1, args.repeats + 1):
        cpu, wall, ops = asyncio.run(one_run(args.batches, args.max_ops))
        print(f"  run {n}: redis-server {cpu:.2f} us CPU per op, {wall:.2f} us wall ({ops} ops)")


if __name__ == "__main__":
    main()
