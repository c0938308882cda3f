"""History that outlives the phones' meetings, told as a family would live it, with the
reference client on the embedded default and on PostgreSQL + Redis + S3:

- a book of 2,000 ops with a snapshot covering 1,500: the backlog keeps only the other
  500, and a brand-new phone paired while every other phone is offline converges to
  the same ledger from the snapshot and those 500 ops, asking no peer;
- Redis restarts and loses the backlog: the phones see a new epoch, one uploads its
  whole state as a snapshot, and a phone that was away resumes through it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import pair
from client.device import Device
from client.identity import Identity
from client.session import Backoff
from tests.conftest import make_settings, reset_production
from tests.support.services import InProcessServer, free_port, wait_port

NEVER = 10**12


def phone(url: str, name: str, events: list[tuple[str, str]] | None = None, **kw: Any) -> Device:
    """A phone without a state file (2,000 saves of the whole ledger would dominate)."""

    def record(who: str, kind: str, msg: dict[str, Any]) -> None:
        if events is not None:
            events.append((who, kind))

    return Device(url, Identity.generate(), name, backoff=Backoff(0.1, 1.0), on_event=record, **kw)


def no_limits(backend: str, tmp_path: Path, request: pytest.FixtureRequest, **kw: Any) -> Any:
    base = make_settings(backend, tmp_path, request, **kw)
    limits = {name: None for name in base.rate_limits}
    return make_settings(backend, tmp_path, request, rate_limits=limits, **kw)


async def test_a_new_phone_joins_from_a_snapshot_while_every_other_phone_is_offline(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = no_limits(backend, tmp_path, request)
    if backend == "production":
        await reset_production(settings)
    async with InProcessServer(settings) as server:
        url = server.url
        # The snapshot is made when the test says, not by the phones' own policy.
        alice = phone(url, "alice", snapshot_after_ops=NEVER)
        bob = phone(url, "bob", snapshot_after_ops=NEVER)
        events: list[tuple[str, str]] = []
        carol = phone(url, "carol", events)
        try:
            await alice.create_book()
            await bob.register()
            await pair.side_by_side(alice, bob)
            alice.go_online()
            bob.go_online()
            for n in range(1500):
                (alice if n % 2 else bob).add_entry(-n - 1, f"entry {n}")
            await alice.wait_synced(within_s=120)
            await bob.wait_synced(within_s=120)
            await bob.wait_until(lambda: bob.state.position.seq == 1500, within_s=60)
            made = await bob.upload_snapshot()
            assert made["covers_seq"] == 1500
            for n in range(1500, 2000):
                (alice if n % 2 else bob).add_entry(-n - 1, f"entry {n}")
            await alice.wait_synced(within_s=120)
            await bob.wait_synced(within_s=120)
            await alice.wait_until(lambda: len(alice.ledger.entries()) == 2000, within_s=60)

            status = await alice.api.sync_status()
            assert status["latest_seq"] == 2000
            assert status["backlog"]["oldest_seq"] == 1501
            assert status["backlog"]["retained_ops"] == 500
            assert status["snapshot"]["covers_seq"] == 1500

            await carol.register()
            await pair.side_by_side(alice, carol)
            await alice.go_offline()
            await bob.go_offline()
            members = await carol.api.devices()
            assert not any(d["online"] for d in members["devices"])

            carol.go_online()
            await carol.wait_until(lambda: len(carol.ledger.entries()) == 2000, within_s=60)
            assert carol.ledger.entries() == alice.ledger.entries() == bob.ledger.entries()
            assert carol.ledger.balance_cents() == -sum(range(1, 2001))
            kinds = [kind for _, kind in events]
            assert kinds.count("sync_gap") == 1 and kinds.count("crdt_operation") == 500
            assert carol.api.blob_bytes_received == made["size_bytes"]
            # Carol asked no peer for its state: nothing was sent after op 2,000.
            await carol.wait_synced()
            assert (await carol.api.sync_status())["latest_seq"] == 2000
        finally:
            for device in (alice, bob, carol):
                await device.close()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A private redis-server that the test may restart (losing its data)."""
    port = free_port()
    args = [shutil.which("redis-server") or "redis-server", "--port", str(port)]
    args += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port)

    def restart() -> None:
        procs[-1].terminate()
        procs[-1].wait(10)
        start()

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", restart
    finally:
        procs[-1].terminate()
        procs[-1].wait(10)


async def test_after_a_redis_restart_a_phone_resumes_through_the_new_snapshot(
    tmp_path: Path, request: pytest.FixtureRequest, restartable_redis: tuple[str, Any]
) -> None:
    redis_url, restart_redis = restartable_redis
    settings = no_limits("production", tmp_path, request, redis_url=redis_url)
    await reset_production(settings)
    async with InProcessServer(settings) as server:
        alice = phone(server.url, "alice")
        bob = phone(server.url, "bob")
        try:
            await alice.create_book()
            await bob.register()
            await pair.side_by_side(alice, bob)
            alice.go_online()
            bob.go_online()
            for n in range(10):
                alice.add_entry(-n - 1, f"before {n}")
            await bob.wait_until(lambda: len(bob.ledger.entries()) == 10)
            old_epoch = bob.state.position.epoch
            await bob.go_offline()
            for n in range(5):
                alice.add_entry(-n - 100, f"while bob is away {n}")
            await alice.wait_synced()

            restart_redis()  # the backlog is gone: a new epoch on the next read or write
            # Alice reconnects by herself, sees the new epoch and uploads her whole state.
            await alice.wait_until(lambda: alice.snapshots_made >= 1, within_s=30)
            status = await alice.api.sync_status()
            assert status["epoch"] != old_epoch
            assert status["snapshot"] is not None

            bob.go_online()  # resumes from his position in the old epoch: a gap, filled
            await bob.wait_until(lambda: len(bob.ledger.entries()) == 15, within_s=30)
            assert bob.ledger.entries() == alice.ledger.entries()
            assert bob.state.position.epoch == status["epoch"]
            assert bob.api.blob_bytes_received > 0
        finally:
            await alice.close()
            await bob.close()
