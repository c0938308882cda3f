"""The backlog on both brokers, driven directly: the embedded one on its SQLite file in
a temporary data dir, the Redis one on a real redis-server. Same answers from both:
retries acked with the first seq, the whole backlog bounded with the biggest books
trimmed first, ops a snapshot covers trimmed; and on the embedded one, a restart that
keeps every acked op under the same epoch, a lost store that does not."""

from __future__ import annotations

import asyncio
import gc
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from relay import durable
from relay.broker import IDEMPOTENCY_TTL_S, BacklogLimits, Broker, NewOp, op_tail
from relay.embedded import EmbeddedBroker
from relay.redis_broker import RedisBroker

BIG = 1 << 30


def limits(**overrides: int) -> BacklogLimits:
    base = {"max_ops": 1000, "max_bytes": BIG, "max_age_s": 3600, "max_total_bytes": BIG}
    return BacklogLimits(**{**base, **overrides})


class Sink:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def on_op(self, book_ref: str, origin: str, seq: int, line: str) -> None:
        self.seqs.append(seq)

    def on_ops(self, book_ref: str, seq: int, origins: list[str], lines: list[str]) -> None:
        self.seqs.extend(range(seq, seq + len(lines)))

    def on_control(self, book_ref: str, control: dict[str, Any]) -> None:
        return None

    def on_bus_lost(self) -> None:
        return None


Make = Callable[[BacklogLimits], Awaitable[Broker]]


@pytest.fixture(params=["embedded", "redis"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    made: list[Broker] = []
    clients: list[Any] = []

    async def build(lim: BacklogLimits) -> Broker:
        broker: Broker
        if request.param == "embedded":
            broker = EmbeddedBroker(tmp_path / "data", lim, time.time)
        else:
            url = request.getfixturevalue("redis_url")
            client = aioredis.from_url(url)
            clients.append(client)
            if not made:
                await client.flushall()
            broker = RedisBroker(lambda: client, url, lim, time.time)
        await broker.start(Sink())
        made.append(broker)
        return broker

    yield build
    for broker in made:
        await broker.stop()
    for client in clients:
        await client.aclose()


def op(cid: str | None = None, size: int = 100, now: int | None = None) -> NewOp:
    payload = "A" * size
    return NewOp("d" * 32, cid, payload, 1, "", int(time.time()) if now is None else now)


def op_bytes(size: int = 100) -> int:
    """What one op counts against the limits: its stored text."""
    return len(op_tail("A" * size, 1, "d" * 32, int(time.time())))


def book() -> str:
    return secrets.token_hex(32)


async def test_a_retry_is_acked_with_the_first_seq_even_in_the_same_batch(make: Make) -> None:
    broker = await make(limits())
    ref = book()
    first = await broker.append(ref, op("a"))
    results = await asyncio.gather(
        broker.append(ref, op("b")), broker.append(ref, op("a")), broker.append(ref, op("b"))
    )
    assert (first.seq, first.duplicate) == (1, False)
    assert [(r.seq, r.duplicate) for r in results] == [(2, False), (1, True), (2, True)]
    history = await broker.history(ref, 0, None, 100)
    assert history.head.latest_seq == 2 and len(history.lines) == 2


async def test_the_total_bound_trims_the_biggest_book_first(make: Make) -> None:
    size = op_bytes()
    # Room for 30 ops in all: the big book (40 ops) gives up its oldest, the small one
    # (5 ops) keeps every op.
    broker = await make(limits(max_total_bytes=30 * size))
    small, big = book(), book()
    for _ in range(5):
        await broker.append(small, op())
    for _ in range(40):
        await broker.append(big, op())
    now = int(time.time())
    kept_small = await broker.head(small, now)
    kept_big = await broker.head(big, now)
    assert (kept_small.oldest_seq, kept_small.latest_seq) == (1, 5)
    assert kept_big.latest_seq == 40 and kept_big.oldest_seq > 1
    assert kept_small.retained_bytes + kept_big.retained_bytes <= 30 * size
    # What was trimmed is a gap for whoever asks for it; what is kept is served whole.
    history = await broker.history(big, 1, kept_big.epoch, 100)
    assert history.gap and history.start == kept_big.oldest_seq - 1
    assert len(history.lines) == kept_big.retained_ops


async def test_the_bound_levels_the_biggest_books_down_together(make: Make) -> None:
    size = op_bytes()
    broker = await make(limits(max_total_bytes=40 * size))
    a, b, c = book(), book(), book()
    for ref, count in ((c, 4), (a, 20), (b, 20)):
        for _ in range(count):
            await broker.append(ref, op())
    await broker.append(a, op())  # over the bound now: a and b go down to one level
    now = int(time.time())
    heads = [await broker.head(ref, now) for ref in (a, b, c)]
    assert heads[2].retained_ops == 4
    assert abs(heads[0].retained_ops - heads[1].retained_ops) <= 2
    assert sum(h.retained_bytes for h in heads) <= 40 * size


async def test_trim_through_drops_covered_ops_of_the_current_epoch_only(make: Make) -> None:
    broker = await make(limits())
    ref = book()
    for _ in range(10):
        await broker.append(ref, op())
    head = await broker.head(ref, int(time.time()))
    await broker.trim_through(ref, "another-epoch", 8)
    assert (await broker.head(ref, int(time.time()))).oldest_seq == 1
    await broker.trim_through(ref, head.epoch, 6)
    after = await broker.head(ref, int(time.time()))
    assert (after.oldest_seq, after.latest_seq) == (7, 10)
    assert after.retained_bytes == 4 * op_bytes()
    history = await broker.history(ref, 6, head.epoch, 100)
    assert not history.gap
    assert [orjson.loads(line)["seq"] for line in history.lines] == [7, 8, 9, 10]
    assert (await broker.history(ref, 5, head.epoch, 100)).gap


async def test_ops_past_the_age_limit_go(make: Make) -> None:
    broker = await make(limits(max_age_s=100))
    ref = book()
    now = int(time.time())
    for at in (now - 500, now - 400, now - 10):
        await broker.append(ref, op(now=at))
    head = await broker.head(ref, now)
    assert (head.oldest_seq, head.latest_seq) == (3, 3)


# The embedded store across restarts.


async def embedded(data: Path, lim: BacklogLimits | None = None) -> EmbeddedBroker:
    broker = EmbeddedBroker(data, lim or limits(), time.time)
    await broker.start(Sink())
    return broker


def crash(broker: EmbeddedBroker) -> None:
    """What a process that dies leaves: its commits in the file, no clean close (the
    file is let go, as the OS lets go of a dead process's locks)."""
    if broker._upkeep is not None:
        broker._upkeep.cancel()
    db, broker.backlog._db = broker.backlog._db, None
    assert db is not None
    db.close()


def id_log_rows(broker: EmbeddedBroker) -> int:
    """Rows of the client-id log in the file (read through the broker's own connection:
    the file is locked to it)."""
    (rows,) = broker.backlog.db.execute("SELECT count(*) FROM id_log").fetchone()
    return int(rows)


async def test_a_restart_keeps_the_epoch_every_op_and_the_client_ids(tmp_path: Path) -> None:
    ref = book()
    first = await embedded(tmp_path)
    for n in range(5):
        await first.append(ref, op(f"id{n}"))
    head = await first.head(ref, int(time.time()))
    await first.stop()
    # A clean stop leaves the file alone: no journal of old page images beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [durable.FILE_NAME]

    again = await embedded(tmp_path)
    try:
        assert await again.head(ref, int(time.time())) == head
        retry = await again.append(ref, op("id3"))
        assert (retry.seq, retry.duplicate) == (4, True)
        assert (await again.append(ref, op("id5"))).seq == 6
        history = await again.history(ref, 2, head.epoch, 100)
        assert not history.gap and [orjson.loads(x)["seq"] for x in history.lines] == [3, 4, 5, 6]
    finally:
        await again.stop()


async def test_a_crash_without_a_clean_close_keeps_what_was_committed(tmp_path: Path) -> None:
    ref = book()
    first = await embedded(tmp_path)
    for _ in range(3):
        await first.append(ref, op())
    head = await first.head(ref, int(time.time()))
    crash(first)  # no stop(): its commits are in the file (the OS has them)
    again = await embedded(tmp_path)
    try:
        assert await again.head(ref, int(time.time())) == head
    finally:
        await again.stop()


async def test_a_machine_crash_or_a_lost_file_gives_new_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    monkeypatch.setattr(durable, "BOOT_ID", boot)
    ref = book()
    first = await embedded(tmp_path)
    await first.append(ref, op())
    epoch = (await first.head(ref, int(time.time()))).epoch
    # Not closed, and the machine booted again: writes may have been lost with it.
    crash(first)
    boot.write_text("boot-2\n")
    second = await embedded(tmp_path)
    head = await second.head(ref, int(time.time()))
    assert head.epoch != epoch and head.latest_seq == 0
    await second.append(ref, op())
    await second.stop()
    # A clean close, then a reboot: nothing was lost.
    boot.write_text("boot-3\n")
    third = await embedded(tmp_path)
    assert (await third.head(ref, int(time.time()))).latest_seq == 1
    epoch = (await third.head(ref, int(time.time()))).epoch
    await third.stop()
    (tmp_path / durable.FILE_NAME).unlink()
    fourth = await embedded(tmp_path)
    try:
        assert (await fourth.head(ref, int(time.time()))).epoch != epoch
    finally:
        await fourth.stop()


async def test_erasure_forgets_the_book_and_its_client_ids(tmp_path: Path) -> None:
    ref = book()
    broker = await embedded(tmp_path)
    try:
        await broker.append(ref, op("x"))
        epoch = (await broker.head(ref, int(time.time()))).epoch
        await broker.drop_book(ref)
        again = await broker.append(ref, op("x"))
        assert (again.seq, again.duplicate) == (1, False)
        assert (await broker.head(ref, int(time.time()))).epoch != epoch
    finally:
        await broker.stop()


async def test_an_erased_books_ciphertext_is_zeroed_in_the_file(tmp_path: Path) -> None:
    gone, kept = book(), book()
    broker = await embedded(tmp_path)
    try:
        for n in range(40):  # several chunks, pages of overflow among them
            await broker.append(gone, op(f"g{n}", size=3000)._replace(payload="R29uZQ" * 500))
            await broker.append(kept, op(f"k{n}", size=3000)._replace(payload="S2VwdA" * 500))
        await broker.drop_book(gone)
        assert broker.backlog.db.execute("PRAGMA secure_delete").fetchone() == (2,)  # FAST
    finally:
        await broker.stop()  # a clean stop: the journal, with its old page images, goes
    held = (tmp_path / durable.FILE_NAME).read_bytes()
    assert b"R29uZQR29uZQ" not in held
    assert b"S2VwdAS2VwdA" in held


async def test_client_ids_past_a_day_go_from_memory_and_disk_and_stay_gone(
    tmp_path: Path,
) -> None:
    ref, t0 = book(), 1_800_000_000
    clock = [float(t0)]
    broker = EmbeddedBroker(tmp_path, limits(max_age_s=10 * IDEMPOTENCY_TTL_S), lambda: clock[0])
    await broker.start(Sink())
    for n, age in enumerate((0, 20, 40)):  # three of the id log's stretches
        clock[0] = t0 + age
        await broker.append(ref, op(f"id{n}", now=t0 + age))
    # A full collection never walks a day of ids (it held the loop 53-65 ms at 360,000).
    assert not gc.is_tracked(broker.backlog.books[ref].ids)
    later = t0 + IDEMPOTENCY_TTL_S + 25
    clock[0] = later
    broker.backlog.forget_old_ids(later)
    assert id_log_rows(broker) == 1  # the rows of the two older ids are deleted
    young = await broker.append(ref, op("id2", now=later))  # from memory: the younger stays
    assert (young.seq, young.relay_timestamp, young.duplicate) == (3, t0 + 40, True)
    assert not (await broker.append(ref, op("id1", now=later))).duplicate  # the older went
    await broker.stop()

    again = EmbeddedBroker(tmp_path, limits(max_age_s=10 * IDEMPOTENCY_TTL_S), lambda: clock[0])
    await again.start(Sink())
    try:
        assert (await again.append(ref, op("id2", now=later))).duplicate
        assert not (await again.append(ref, op("id0", now=later))).duplicate
    finally:
        await again.stop()


async def test_a_client_id_is_the_senders_own_and_a_retry_gets_the_first_time(
    make: Make,
) -> None:
    broker = await make(limits())
    ref, t0 = book(), int(time.time())
    mine = await broker.append(ref, op("same", now=t0))
    theirs = await broker.append(ref, op("same", now=t0 + 1)._replace(device_id="e" * 32))
    retry = await broker.append(ref, op("same", now=t0 + 2))
    assert [(r.seq, r.duplicate) for r in (mine, theirs)] == [(1, False), (2, False)]
    assert (retry.seq, retry.relay_timestamp, retry.duplicate) == (1, t0, True)


async def test_client_ids_a_restart_finds_past_a_day_are_deleted_at_the_next_upkeep(
    tmp_path: Path,
) -> None:
    ref, t0 = book(), 1_800_000_000
    clock = [float(t0)]
    lim = limits(max_age_s=10 * IDEMPOTENCY_TTL_S)
    broker = EmbeddedBroker(tmp_path, lim, lambda: clock[0])
    await broker.start(Sink())
    await broker.append(ref, op("old", now=t0))
    await broker.stop()

    clock[0] = later = t0 + IDEMPOTENCY_TTL_S + 1
    again = EmbeddedBroker(tmp_path, lim, lambda: clock[0])
    await again.start(Sink())
    try:
        await again.append(ref, op("new", now=later))
        again.backlog.forget_old_ids(later)
        assert id_log_rows(again) == 1
        assert not (await again.append(ref, op("old", now=later))).duplicate
        assert (await again.append(ref, op("new", now=later))).duplicate
    finally:
        await again.stop()


async def test_a_second_backlog_on_the_same_file_is_refused_and_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "LOCK_WAIT_S", 0.2)
    ref = book()
    first = await embedded(tmp_path)
    try:
        for n in range(3):
            await first.append(ref, op(f"id{n}"))
        with pytest.raises(durable.BacklogInUse, match="one server per data dir"):
            await embedded(tmp_path)
        with pytest.raises(durable.BacklogInUse):  # `serve`'s check before it starts
            durable.check_free(tmp_path / durable.FILE_NAME)
        # The first goes on, on the same file.
        assert (await first.append(ref, op("id3"))).seq == 4
        head = await first.head(ref, int(time.time()))
    finally:
        await first.stop()
    durable.check_free(tmp_path / durable.FILE_NAME)
    again = await embedded(tmp_path)
    try:
        assert await again.head(ref, int(time.time())) == head
        assert (await again.append(ref, op("id1"))).duplicate
    finally:
        await again.stop()


async def test_an_unreadable_file_is_a_new_store(tmp_path: Path) -> None:
    (tmp_path / durable.FILE_NAME).write_bytes(b"not a database " * 512)
    durable.check_free(tmp_path / durable.FILE_NAME)  # not in use: `open` deals with it
    broker = await embedded(tmp_path)
    try:
        assert (await broker.append(book(), op("x"))).seq == 1
    finally:
        await broker.stop()


# An earlier version kept the file in WAL mode: a process killed before a checkpoint
# leaves committed transactions only in `-wal`.
_KILLED_IN_WAL_MODE = """
import asyncio, os, sqlite3, sys, time
from pathlib import Path
from relay import durable
from relay.broker import BacklogLimits, NewOp
from relay.embedded import EmbeddedBroker

def wal_connect(self):
    db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.executescript(durable._SCHEMA)
    return db

durable.DurableBacklog._connect = wal_connect

class Sink:
    def on_op(self, *a): pass
    def on_control(self, *a): pass

async def main():
    lim = BacklogLimits(1000, 1 << 30, 3600, 1 << 30)
    broker = EmbeddedBroker(Path(sys.argv[1]), lim, time.time)
    await broker.start(Sink())
    for n in range(5):
        op = NewOp("d" * 32, f"id{n}", "A" * 100, 1, "", int(time.time()))
        await broker.append(sys.argv[2], op)
    print((await broker.head(sys.argv[2], int(time.time()))).epoch, flush=True)
    os._exit(0)  # killed: no close, no checkpoint

asyncio.run(main())
"""


async def test_a_file_an_earlier_version_left_in_wal_mode_keeps_every_op(tmp_path: Path) -> None:
    ref = book()
    killed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_IN_WAL_MODE,
        str(tmp_path),
        ref,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await killed.communicate()
    epoch = out.decode().strip()
    wal = tmp_path / f"{durable.FILE_NAME}-wal"
    assert epoch and wal.stat().st_size > 0  # the ops are in the log only
    again = await embedded(tmp_path)
    try:
        head = await again.head(ref, int(time.time()))
        assert (head.epoch, head.latest_seq) == (epoch, 5)
        assert (await again.append(ref, op("id4"))).duplicate
        history = await again.history(ref, 0, epoch, 100)
        assert [orjson.loads(x)["seq"] for x in history.lines] == [1, 2, 3, 4, 5]
        assert not wal.exists()  # applied, and the file out of WAL mode
    finally:
        await again.stop()
