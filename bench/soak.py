"""Soak: two `homepocket-relay serve` instances on Redis and PostgreSQL, 2,000 devices
in books of 4, for a while, with reconnect churn and a Redis stall every two minutes.

- Each device sends one op every few seconds (`--op-interval-s`), with an id; it
  retries by id after an `error`, resends what is unacked after a reconnect, and
  resumes with `since`/`epoch` from its position (tests/support/faults.py `Device`).
- Churn: each device closes its socket itself after a random 30-150 s (once every
  send of that session is answered), stays away 0.1-0.4 s, and reconnects; one time in
  five to the other instance.
- Every two minutes (the first at 60 s) redis-server is frozen (SIGSTOP) for 9 s.
- Every 10 s, for each server: RSS (/proc/<pid>/status), open fds (/proc/<pid>/fd),
  its TCP sockets split into client sockets (on its port: devices, HTTP) and backend
  sockets (to Redis and PostgreSQL), and from its /metrics the relay sockets it holds
  (`homepocket_ws_connections`) and its asyncio tasks (`homepocket_asyncio_tasks`).

At the end, with no new ops: every op acked; every acked op in GET ops at its seq with
the payload sent; every send answered exactly once (sends on a socket closed under
them are counted apart, and sent again); once the devices have gone, each server's
client sockets and its fds other than backend sockets back to the baseline taken
before the devices came, and so are its relay sockets and asyncio tasks (within 10);
RSS flat after warm-up (the first two minutes): growth from
the first sample after warm-up to the last at most 10% and the least-squares slope at
most 1 MB/min; no unhandled exception in either server's log.

Run from the repository root with the test environment (.venv, PostgreSQL and Redis
installed, as scripts/test prepares them):

    .venv/bin/python bench/soak.py [--minutes 10] [--devices 2000] [--seed N]

Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from starlette.datastructures import Secret

from bench.run import BOOK_SIZE, RELAY_ENV, raise_nofile
from infra.db import open_database
from infra.ids import IdHasher
from infra.members import Members
from infra.settings import Settings, resolve_id_hash_key
from tests.support.faults import Device, private_redis
from tests.support.keys import DeviceKey
from tests.support.relay import new_book_id, register
from tests.support.services import ID_HASH_KEY, ServerProcess, postgres_database, unhandled_errors

SAMPLE_S = 10.0
WARMUP_S = 120.0
STALL_EVERY_S, STALL_FIRST_S, STALL_S = 120.0, 60.0, 9.0
SESSION_S = (30.0, 150.0)
MOVE_P = 0.2
TASKS_SLACK = 10  # background tasks that may come and go (pool, timers)


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    clients: int  # TCP sockets on the server's port (listening one excluded)
    backend: int  # TCP sockets to elsewhere (Redis, PostgreSQL)
    other: int  # fds that are not TCP sockets
    ws: int  # homepocket_ws_connections (-1: not exposed)
    tasks: int  # homepocket_asyncio_tasks (-1: not exposed)


def tcp_sockets(pid: int) -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) of the TCP sockets in pid's netns."""
    found = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            found[int(f[9])] = (
                int(f[1].rsplit(":", 1)[1], 16),
                int(f[2].rsplit(":", 1)[1], 16),
                f[3],
            )
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def gauges(server: ServerProcess) -> dict[str, int]:
    """The server's own gauges from /metrics (read after the /proc counts, on a
    connection of its own that is closed at once)."""
    found: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(server.url + "/metrics")).text
    except httpx.HTTPError:
        return found
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("homepocket_ws_connections", "homepocket_asyncio_tasks"):
            found[name] = int(float(value))
    return found


async def sample(server: ServerProcess, t: float) -> Sample:
    assert server.proc is not None
    pid = server.proc.pid
    inodes = []
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.append(int(link[8:-1]))
    tcp = tcp_sockets(pid)
    clients = backend = 0
    for inode in inodes:
        if inode not in tcp:
            continue
        local, _remote, state = tcp[inode]
        if local == server.port:
            clients += state != "0A"  # not the listening socket
        else:
            backend += 1
    tcp_fds = sum(1 for i in inodes if i in tcp)
    rss = rss_mb(pid)
    g = await gauges(server)
    return Sample(
        t,
        rss,
        len(names),
        clients,
        backend,
        len(names) - tcp_fds,
        g.get("homepocket_ws_connections", -1),
        g.get("homepocket_asyncio_tasks", -1),
    )


async def make_devices(http: httpx.AsyncClient, settings: Settings, n: int) -> list[DeviceKey]:
    """n registered devices in books of BOOK_SIZE (the first creates it, the others are
    made members as a confirmed pairing leaves them)."""
    keys = []
    for i in range(n):
        if i % BOOK_SIZE == 0:
            book_id = new_book_id()
        keys.append(DeviceKey(book_id=book_id))
    sem = asyncio.Semaphore(16)

    async def one(key: DeviceKey, first: bool) -> None:
        async with sem:
            await register(http, key, key.book_id if first else None)

    await asyncio.gather(*(one(k, True) for k in keys[::BOOK_SIZE]))
    await asyncio.gather(*(one(k, False) for i, k in enumerate(keys) if i % BOOK_SIZE))
    hasher = IdHasher(str(resolve_id_hash_key(settings)))
    db = await open_database(settings.database_url, settings.data_dir)
    try:
        members = Members(db)
        for i, key in enumerate(keys):
            if i % BOOK_SIZE:
                ref = hasher.book_ref(str(key.book_id))
                assert await members.add_pending(key.device_id, ref, 100)
                assert await members.promote(key.device_id, ref)
    finally:
        await db.close()
    return keys


def slope_per_min(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    mx = sum(t for t, _ in points) / len(points)
    my = sum(v for _, v in points) / len(points)
    den = sum((t - mx) ** 2 for t, _ in points)
    return 60 * sum((t - mx) * (v - my) for t, v in points) / den if den else 0.0


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.duration_s = args.minutes * 60
        self.rng = random.Random(args.seed)
        self.samples: list[tuple[list[Sample], dict[str, Any]]] = []
        self.verdicts: list[tuple[bool, str, str]] = []
        self.stalls = 0
        self.stalled = False

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.verdicts.append((ok, name, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name:<14} {detail}", flush=True)

    async def stall_loop(self, redis_proc: Any, started: float) -> None:
        at = started + STALL_FIRST_S
        while at + STALL_S < started + self.duration_s:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            redis_proc.send_signal(signal.SIGSTOP)
            self.stalled = True
            try:
                await asyncio.sleep(STALL_S)
            finally:
                redis_proc.send_signal(signal.SIGCONT)
                self.stalled = False
            self.stalls += 1
            at += STALL_EVERY_S

    async def sample_loop(
        self, servers: list[ServerProcess], devices: list[Device], started: float, until: float
    ) -> None:
        print(
            "   t  | RSS MB a/b    | fds a/b     | client socks a/b | backend a/b "
            "| ws a/b      | tasks a/b   | acked   sends   answers dropped sessions",
            flush=True,
        )
        next_at = started
        while time.monotonic() < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            t = time.monotonic() - started
            a, b = [await sample(s, t) for s in servers]
            totals = {
                "acked": sum(len(d.acked) for d in devices),
                "sends": sum(d.sends for d in devices),
                "answers": sum(d.answers for d in devices),
                "dropped": sum(d.dropped for d in devices),
                "sessions": sum(d.sessions for d in devices),
                "stalled": self.stalled,
            }
            self.samples.append(([a, b], totals))
            print(row(a, b, totals), flush=True)
            next_at += SAMPLE_S


def row(a: Sample, b: Sample, x: dict[str, Any]) -> str:
    return (
        f"{a.t:5.0f} | {a.rss_mb:6.1f} {b.rss_mb:6.1f} | {a.fds:5d} {b.fds:5d} | "
        f"{a.clients:7d} {b.clients:7d}  | {a.backend:5d} {b.backend:5d} | "
        f"{a.ws:5d} {b.ws:5d} | {a.tasks:5d} {b.tasks:5d} | "
        f"{x['acked']:7d} {x['sends']:7d} {x['answers']:7d} {x['dropped']:5d} "
        f"{x['sessions']:6d}{'  redis stalled' if x['stalled'] else ''}"
    )


async def main(args: argparse.Namespace) -> int:
    print(raise_nofile(), flush=True)
    soak = Soak(args)
    print(
        f"seed {args.seed}, {args.devices} devices in books of {BOOK_SIZE}, "
        f"{args.minutes} min, one op per device every ~{args.op_interval_s} s",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="hp-soak-") as tmp,
        private_redis() as (redis_proc, redis_port),
        postgres_database() as pg_url,
    ):
        env = {
            **RELAY_ENV,
            "RATE_LIMIT_PHOTO_UPLOAD": "off",
            "DATABASE_URL": pg_url,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "ID_HASH_KEY": ID_HASH_KEY,
        }
        loop = asyncio.get_running_loop()
        servers = [ServerProcess(env, Path(tmp) / f"i{i}") for i in range(2)]
        try:
            for server in servers:
                await loop.run_in_executor(None, server.start)
            return await drive(soak, servers, redis_proc, pg_url)
        finally:
            redis_proc.send_signal(signal.SIGCONT)
            for server in servers:
                if server.proc is not None and server.proc.poll() is None:
                    server.stop(signal.SIGTERM)


async def drive(soak: Soak, servers: list[ServerProcess], redis_proc: Any, pg_url: str) -> int:
    args = soak.args
    settings = Settings(database_url=pg_url, id_hash_key=Secret(ID_HASH_KEY))
    async with httpx.AsyncClient(base_url=servers[0].url, timeout=30) as http:
        began = time.monotonic()
        keys = await make_devices(http, settings, args.devices)
        print(f"registered {len(keys)} devices in {time.monotonic() - began:.0f} s", flush=True)
    await asyncio.sleep(2)
    base = [await sample(s, 0) for s in servers]
    print(
        "baseline: "
        + "; ".join(
            f"{'ab'[i]}: RSS {s.rss_mb:.1f} MB, {s.fds} fds, {s.clients} client / "
            f"{s.backend} backend sockets, {s.other} other fds"
            for i, s in enumerate(base)
        ),
        flush=True,
    )
    devices = [
        Device(
            k,
            [servers[i % 2].ws_url, servers[1 - i % 2].ws_url],
            str(k.book_id),
            10**9,
            args.op_interval_s,
            random.Random(soak.rng.random()),
            resume=True,
            session_s=SESSION_S,
            move_p=MOVE_P,
            poll_s=1.0,
        )
        for i, k in enumerate(keys)
    ]
    started = time.monotonic()
    until = started + soak.duration_s
    sampling = asyncio.ensure_future(soak.sample_loop(servers, devices, started, until))
    stall = asyncio.ensure_future(soak.stall_loop(redis_proc, started))
    tasks = []
    for d in devices:  # a ramp of ~10 s rather than 2,000 handshakes at once
        tasks.append(asyncio.ensure_future(d.run()))
        await asyncio.sleep(10 / len(devices))
    await sampling
    await stall

    # The end: no new ops; what is pending gets acked; then every device leaves.
    for d in devices:
        d.target = len(d.payloads)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(d.pending for d in devices):
        await asyncio.sleep(0.5)
    for d in devices:
        d.stopping = True
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    left = await settle(servers, base)
    return await verdicts(soak, servers, devices, keys, base, left)


async def settle(servers: list[ServerProcess], base: list[Sample]) -> list[Sample]:
    """Samples once every device has gone: as soon as client sockets, other fds, relay
    sockets and tasks are back to the baseline, or after 30 s."""
    began = time.monotonic()
    while True:
        now = [await sample(s, -1) for s in servers]
        back = all(
            n.clients <= b.clients
            and n.other <= b.other
            and n.ws <= b.ws
            and n.tasks <= b.tasks + TASKS_SLACK
            for n, b in zip(now, base, strict=True)
        )
        if back or time.monotonic() - began > 30:
            took = time.monotonic() - began
            print(f"after the devices left: {'back' if back else 'not back'} in {took:.0f} s")
            return now
        await asyncio.sleep(1)


async def verdicts(
    soak: Soak,
    servers: list[ServerProcess],
    devices: list[Device],
    keys: list[DeviceKey],
    base: list[Sample],
    left: list[Sample],
) -> int:
    print("", flush=True)
    problems = [p for d in devices for p in d.problems]
    sends = sum(d.sends for d in devices)
    answers = sum(d.answers for d in devices)
    dropped = sum(d.dropped for d in devices)
    acked = sum(len(d.acked) for d in devices)
    unacked = sum(len(d.pending) for d in devices)
    sessions = sum(d.sessions for d in devices)
    gaps = sum(d.gaps for d in devices)
    print(
        f"{sessions} sessions ({sessions - len(devices)} reconnects), {soak.stalls} Redis stalls, "
        f"{gaps} sync_gaps",
        flush=True,
    )
    soak.check(
        "all acked",
        unacked == 0,
        f"{acked} ops acked, {unacked} never acked",
    )

    # Every acked op in GET ops at its seq, with the payload sent.
    by_book: dict[str, list[Device]] = {}
    for d in devices:
        by_book.setdefault(d.book_id, []).append(d)
    wrong = missing = 0
    sem = asyncio.Semaphore(8)

    async def book(book_id: str, members: list[Device]) -> tuple[int, int]:
        stored: dict[int, tuple[str, str]] = {}
        auth = members[0].key.auth()
        params: dict[str, Any] = {"since": 0, "limit": 1000}
        async with sem, httpx.AsyncClient(base_url=servers[0].url, timeout=30) as http:
            while True:
                got = (
                    await http.get(f"/api/v1/books/{book_id}/ops", params=params, headers=auth)
                ).json()["data"]
                stored.update({o["seq"]: (o["device_id"], o["payload"]) for o in got["ops"]})
                if not got["has_more"]:
                    break
                params = {"since": got["ops"][-1]["seq"], "epoch": got["epoch"], "limit": 1000}
        w = m = 0
        for d in members:
            for op_id, seq in d.acked.items():
                have = stored.get(seq)
                if have is None:
                    m += 1
                elif have != (d.key.device_id, d.payloads[op_id]):
                    w += 1
        return w, m

    for w, m in await asyncio.gather(*(book(b, ms) for b, ms in by_book.items())):
        wrong += w
        missing += m
    soak.check(
        "ledger",
        wrong == 0 and missing == 0 and acked > 0,
        f"{acked} acked ops in GET ops at their seq with their payload; "
        f"{missing} missing, {wrong} another op",
    )
    soak.check(
        "answers",
        not problems and answers == sends - dropped,
        f"{sends} sends, {answers} answers, {dropped} on sockets closed under them "
        f"(sent again); {len(problems)} wrong answers" + (f": {problems[0]}" if problems else ""),
    )
    for i, (b, n) in enumerate(zip(base, left, strict=True)):
        peak = max(max(s[0][i].clients for s in soak.samples), 0)
        soak.check(
            f"sockets {'ab'[i]}",
            n.clients <= b.clients and n.other <= b.other,
            f"client sockets {b.clients} -> peak {peak} -> {n.clients}; non-socket fds "
            f"{b.other} -> {n.other}; backend sockets {b.backend} -> {n.backend}; "
            f"fds {b.fds} -> {n.fds}",
        )
        if b.ws >= 0 and b.tasks >= 0:
            most = max(s[0][i].tasks for s in soak.samples)
            soak.check(
                f"tasks {'ab'[i]}",
                n.ws <= b.ws and n.tasks <= b.tasks + TASKS_SLACK,
                f"relay sockets {b.ws} -> {n.ws}; asyncio tasks {b.tasks} -> peak {most} "
                f"-> {n.tasks} (at most {TASKS_SLACK} more than the baseline)",
            )
    for i in range(2):
        after = [s[0][i] for s in soak.samples if s[0][i].t >= WARMUP_S]
        if not after:
            soak.check(f"rss {'ab'[i]}", False, "no sample after warm-up")
            continue
        first, last = after[0].rss_mb, after[-1].rss_mb
        top = max(s.rss_mb for s in after)
        slope = slope_per_min([(s.t, s.rss_mb) for s in after])
        soak.check(
            f"rss {'ab'[i]}",
            last <= first * 1.10 and slope <= 1.0,
            f"after warm-up: first {first:.1f} MB, last {last:.1f}, max {top:.1f}, "
            f"slope {slope:+.2f} MB/min ({len(after)} samples)",
        )
    found = [line for s in servers for line in unhandled_errors(s.log())]
    soak.check(
        "server logs",
        not found,
        found[0][:200] if found else "no unhandled exception in either server",
    )
    failed = [name for ok, name, _ in soak.verdicts if not ok]
    print(f"{len(soak.verdicts) - len(failed)}/{len(soak.verdicts)} checks hold", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--op-interval-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=random.randrange(2**32))
    sys.exit(asyncio.run(main(parser.parse_args())))
