"""The reference client against the real server: the demo's story, three phones with
one offline, catching up from a snapshot, a wrong book key, and reconnecting across a
server restart.

Runs on the embedded default and on Redis + PostgreSQL + S3 through `backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client import crypto, pair
from client.demo import run_scenario
from client.device import Device
from client.identity import unb64
from client.session import Backoff
from tests.conftest import make_settings, reset_production
from tests.support.services import ID_HASH_KEY, InProcessServer, ServerProcess, free_port

NOTES = ("Groceries", "Electricity bill", "Bakery", "Pharmacy", "Bus ticket")


def fast(url: str, directory: Path, name: str, **kw: object) -> Device:
    """A device that reconnects quickly, so the tests do not sleep for long."""
    return Device.open(directory / name, url, name, backoff=Backoff(0.1, 1.0), **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def online_and_offline(url: str, directory: Path) -> AsyncIterator[tuple[Device, Device]]:
    """a, which made the book and is online, and b, paired with it and never online."""
    a, b = fast(url, directory, "a"), fast(url, directory, "b")
    try:
        await a.create_book()
        await b.register()
        await pair.side_by_side(a, b)
        a.go_online()
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_demo_scenario_converges_and_the_server_sees_only_ciphertext(
    server: InProcessServer, tmp_path: Path
) -> None:
    lines: list[str] = []
    result = await run_scenario(server.url, tmp_path, lines.append)
    alice, bob = result.ledgers["alice"], result.ledgers["bob"]
    assert alice == bob == result.ledgers["carol"]
    assert sorted(e.note for e in alice) == sorted(NOTES)
    assert [e.photo_id is not None for e in alice if e.note == "Groceries"] == [True]
    assert result.sas["alice"] == result.sas["bob"] and len(result.sas["alice"]) == 6
    assert result.photo_ok
    view = result.server_view
    assert len(view["devices"]) == 3
    status = view["sync_status"]
    # The snapshot trimmed the ops it covers: the backlog keeps only those after it.
    assert status["snapshot"]["covers_seq"] >= 5 and status["ops_total"] > len(view["ops"]) >= 1
    assert status["backlog"]["oldest_seq"] == status["snapshot"]["covers_seq"] + 1
    for payload in result.op_payloads:  # no plaintext reached the server
        assert not any(note.encode() in payload for note in NOTES)
    assert any("What the server saw:" in line for line in lines)


async def test_three_devices_one_offline_converge(server: InProcessServer, tmp_path: Path) -> None:
    a, b, c = (fast(server.url, tmp_path, n) for n in ("a", "b", "c"))
    try:
        await a.create_book()
        for joiner in (b, c):
            await joiner.register()
            first, second = await pair.side_by_side(a, joiner)
            assert first.sas == second.sas
        assert b.book_key == c.book_key == a.book_key
        for d in (a, b, c):
            d.go_online()
        await asyncio.gather(*(d.wait_synced() for d in (a, b, c)))
        a.add_entry(-100, "shared before")
        await c.wait_until(lambda: len(c.ledger.entries()) == 1)
        await c.go_offline()
        for i in range(5):
            a.add_entry(-i, f"a {i}")
            b.add_entry(-i, f"b {i}")
            c.add_entry(-i, f"c {i}")  # queued while offline
        await asyncio.gather(a.wait_synced(), b.wait_synced())
        assert len(c.state.outbox) == 5
        c.go_online()
        for d in (a, b, c):
            await d.wait_until(lambda d=d: len(d.ledger.entries()) == 16)  # type: ignore[misc]
        await asyncio.gather(*(d.wait_synced() for d in (a, b, c)))
        assert a.ledger.entries() == b.ledger.entries() == c.ledger.entries()
        assert a.undecryptable == b.undecryptable == c.undecryptable == 0
        status = await a.api.sync_status()
        assert status["latest_seq"] == 16  # every op relayed exactly once, retries included
    finally:
        for d in (a, b, c):
            await d.close()


async def test_outbox_and_ledger_survive_an_app_restart(
    server: InProcessServer, tmp_path: Path
) -> None:
    """Entries written offline and never sent survive the app being killed: the outbox,
    the ledger and the position are on disk, and go out on the next start."""
    a, b = fast(server.url, tmp_path, "a"), fast(server.url, tmp_path, "b")
    try:
        await a.create_book()
        await b.register()
        await pair.side_by_side(a, b)
        a.go_online()
        a.add_entry(-1, "from a")
        await a.wait_synced()
        b.add_entry(-2, "written offline")  # b never went online
        await b.close()
        b = fast(server.url, tmp_path, "b")  # the app starts again from its folder
        assert [e.note for e in b.ledger.entries()] == ["written offline"]
        assert len(b.state.outbox) == 1
        b.go_online()
        await b.wait_synced()
        await b.wait_until(lambda: len(b.ledger.entries()) == 2)
        await a.wait_until(lambda: len(a.ledger.entries()) == 2)
        assert a.ledger.entries() == b.ledger.entries()
    finally:
        await a.close()
        await b.close()


async def test_a_device_without_a_socket_syncs_over_http(
    server: InProcessServer, tmp_path: Path
) -> None:
    """POST /relay/send and GET ops: the same ledger, the same ids, no socket."""
    async with online_and_offline(server.url, tmp_path) as (a, b):
        for i in range(3):
            a.add_entry(-i, f"socket {i}")
        await a.wait_synced()
        b.add_entry(-7, "over http")
        await b.sync_over_http()
        assert not b.state.outbox and b.state.position.seq == 4
        await b.sync_over_http()  # nothing new: nothing changes, nothing sent twice
        await a.wait_until(lambda: len(a.ledger.entries()) == 4)
        assert a.ledger.entries() == b.ledger.entries()
        assert (await a.api.sync_status())["latest_seq"] == 4


async def test_a_device_behind_the_backlog_catches_up_from_a_snapshot(
    server: InProcessServer, tmp_path: Path
) -> None:
    """a uploads a snapshot, which trims the ops it covers; b, which never synced, gets a
    gap naming the snapshot, loads it and replays the rest, without asking a peer."""
    async with online_and_offline(server.url, tmp_path) as (a, b):
        for i in range(4):
            a.add_entry(-i, f"before {i}")
        await a.wait_synced()
        covered = a.state.position.seq
        made = await a.upload_snapshot()
        assert made["covers_seq"] == covered
        a.add_entry(-9, "after the snapshot")
        await a.wait_synced()
        page = await b.api.ops()
        assert page["oldest_seq"] == covered + 1
        assert page["gap"]["snapshot"]["snapshot_id"] == made["snapshot_id"]
        latest = (await a.api.sync_status())["latest_seq"]
        await b.sync_over_http()
        assert b.ledger.entries() == a.ledger.entries() and len(b.ledger.entries()) == 5
        assert b.state.position.seq == latest
        assert (await a.api.sync_status())["latest_seq"] == latest  # b asked nobody


async def test_a_wrong_book_key_decrypts_nothing(server: InProcessServer, tmp_path: Path) -> None:
    a, b = fast(server.url, tmp_path, "a"), fast(server.url, tmp_path, "b")
    try:
        await a.create_book()
        await b.register()
        await pair.side_by_side(a, b)
        b.join_book(b.require_book(), crypto.new_book_key())  # not the book's key
        a.go_online()
        b.go_online()
        a.add_entry(-4250, "Groceries")
        await b.wait_until(lambda: b.undecryptable == 1)
        assert b.ledger.entries() == []
        ops = await b.api.ops()
        (payload,) = [unb64(op["payload"]) for op in ops["ops"]]
        with pytest.raises(crypto.DecryptError):
            crypto.open_sealed(b.book_key, payload, crypto.op_aad(b.require_book()))
        assert crypto.open_sealed(a.book_key, payload, crypto.op_aad(a.require_book()))
    finally:
        await a.close()
        await b.close()


async def test_token_is_refreshed_on_the_socket_before_it_expires(
    server: InProcessServer, tmp_path: Path
) -> None:
    a = fast(server.url, tmp_path, "a", token_lifetime_s=3)
    b = fast(server.url, tmp_path, "b")
    try:
        await a.create_book()
        await b.register()
        await pair.side_by_side(a, b)
        a.go_online()
        b.go_online()
        await a.wait_synced()
        await asyncio.sleep(4.0)  # past the first token's expiry
        assert a.session is not None and a.session.tokens_refreshed >= 1
        assert a.session.connects == 1  # never closed with 4401
        a.add_entry(-1, "after expiry")
        await b.wait_until(lambda: len(b.ledger.entries()) == 1)
    finally:
        await a.close()
        await b.close()


async def test_revoked_device_stops_reconnecting(server: InProcessServer, tmp_path: Path) -> None:
    a, b = fast(server.url, tmp_path, "a"), fast(server.url, tmp_path, "b")
    try:
        await a.create_book()
        await b.register()
        await pair.side_by_side(a, b)
        b.go_online()
        await b.wait_synced()
        await a.api.revoke(b.device_id)
        await b.wait_until(lambda: b.session is not None and not b.session.running)
        assert b.session is not None and b.session.stopped_reason == "4403 revoked or not a member"
    finally:
        await a.close()
        await b.close()


async def test_erased_book_stops_every_device(server: InProcessServer, tmp_path: Path) -> None:
    a, b = fast(server.url, tmp_path, "a"), fast(server.url, tmp_path, "b")
    try:
        await a.create_book()
        await b.register()
        await pair.side_by_side(a, b)
        sessions = [a.go_online(), b.go_online()]
        await asyncio.gather(a.wait_synced(), b.wait_synced())
        await a.api.erase_book()
        for d, session in zip((a, b), sessions, strict=True):
            await d.wait_until(lambda s=session: not s.running)  # type: ignore[misc]
            assert session.stopped_reason == "4410 book erased"
    finally:
        await a.close()
        await b.close()


@pytest.mark.slow
async def test_reconnect_and_resync_across_a_server_restart(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A real `homepocket-relay serve`, stopped (SIGTERM: sockets close with 1012) and
    started again on the same port. The backlog survives on both backends (the data
    dir's file, or Redis), so the devices resume from it with no gap."""
    env = {"ID_HASH_KEY": ID_HASH_KEY, "RATE_LIMIT_WS_CONNECT": "off", "LOG_LEVEL": "WARNING"}
    if backend == "production":
        settings = make_settings(backend, tmp_path, request, with_s3=False)
        await reset_production(settings)
        env.update(DATABASE_URL=str(settings.database_url), REDIS_URL=str(settings.redis_url))
    process = ServerProcess(env, tmp_path / "server", port=free_port()).start()
    events: list[tuple[str, str]] = []

    def record(name: str, kind: str, msg: object) -> None:
        events.append((name, kind))

    a = fast(process.url, tmp_path, "a", on_event=record)
    b = fast(process.url, tmp_path, "b", on_event=record)
    try:
        await a.create_book()
        await b.register()
        await pair.side_by_side(a, b)
        a.go_online()
        b.go_online()
        await asyncio.gather(a.wait_synced(), b.wait_synced())
        a.add_entry(-1, "before restart")
        await b.wait_until(lambda: len(b.ledger.entries()) == 1)
        await b.go_offline()
        a.add_entry(-2, "only Alice saw this before the restart")
        await a.wait_synced()

        assert await asyncio.to_thread(process.stop, signal.SIGTERM) == 0
        a.add_entry(-3, "written while the server was down")
        await asyncio.sleep(0.3)
        assert a.session is not None and not a.session.live.is_set()
        await asyncio.to_thread(process.start)

        await a.wait_synced(within_s=20)  # reconnected by itself, queued op acked
        assert a.session is not None and a.session.connects >= 2
        b.go_online()  # resumes from the backlog
        await b.wait_until(lambda: len(b.ledger.entries()) == 3, within_s=20)
        await a.wait_until(lambda: len(a.ledger.entries()) == 3)
        assert a.ledger.entries() == b.ledger.entries()
        gaps = {name for name, kind in events if kind == "sync_gap"}
        assert gaps == set()
    finally:
        await a.close()
        await b.close()
        process.stop()


async def test_demo_command_runs_its_own_embedded_server() -> None:
    """`homepocket-relay demo` as a user runs it: a real process, its own server."""
    exe = Path(sys.executable).parent / "homepocket-relay"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    proc = await asyncio.create_subprocess_exec(
        str(exe), "demo", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 50)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "Alice's, Bob's and Carol's copies are identical." in text
    assert "the whole ledger, from the server alone." in text
    assert "the same bytes as the original." in text
    assert "What the server saw:" in text and "Traceback" not in text
