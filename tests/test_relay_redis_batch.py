"""The Redis broker's batched append on a real redis-server: appends queued in one loop
turn go to Redis as one script call, answered op by op in the order queued, and
published as one message per book. Same guarantees as one op at a time: one seq per
op, duplicates acked with the first seq and not relayed, the backlog trimmed to its
limits, and every instance sees a book's ops in seq order."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from relay import redis_broker
from relay.broker import OP_PREFIX, Appended, BacklogLimits, NewOp
from relay.redis_broker import RedisBroker

LIMITS = BacklogLimits(max_ops=1000, max_bytes=1 << 24, max_age_s=3600, max_total_bytes=1 << 30)


class Recorder:
    """A sink that keeps what the bus delivered."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, int, list[str], list[str]]] = []

    def on_op(self, book_ref: str, origin: str, seq: int, line: str) -> None:
        self.messages.append((book_ref, seq, [origin], [line]))

    def on_ops(self, book_ref: str, seq: int, origins: list[str], lines: list[str]) -> None:
        self.messages.append((book_ref, seq, origins, lines))

    def on_control(self, book_ref: str, control: dict[str, Any]) -> None:
        return None

    def on_bus_lost(self) -> None:
        raise AssertionError("the subscription dropped")

    def ops(self, book_ref: str) -> list[tuple[int, str, dict[str, Any]]]:
        """(seq, origin, op) of the book, in the order received."""
        return [
            (seq + i, origin, orjson.loads(line))
            for book, seq, origins, lines in self.messages
            if book == book_ref
            for i, (origin, line) in enumerate(zip(origins, lines, strict=True))
        ]


Make = Callable[..., Awaitable[tuple[RedisBroker, Recorder]]]


@pytest.fixture
async def make_broker(redis_url: str) -> AsyncIterator[Make]:
    made: list[RedisBroker] = []

    async def make(limits: BacklogLimits = LIMITS) -> tuple[RedisBroker, Recorder]:
        sink = Recorder()
        broker = RedisBroker(lambda: aioredis.from_url(redis_url), redis_url, limits, time.time)
        await broker.start(sink)
        made.append(broker)
        return broker, sink

    yield make
    for broker in made:
        await broker.stop()
        await broker._r.aclose()


def book() -> str:
    return secrets.token_hex(16)


def new_op(
    broker: RedisBroker, device: str, cid: str | None, n: int = 0, now: int | None = None
) -> NewOp:
    at = int(time.time()) if now is None else now
    return NewOp(device, cid, f"cGF5bG9hZA{n:06d}", at, f"{broker.instance}.{device}", at)


async def in_one_turn(
    broker: RedisBroker, ops: list[tuple[str, NewOp]]
) -> list[Appended | Exception]:
    """Queue every op before the loop turns (one batch); the answers in arrival order."""
    answers: list[tuple[int, Appended | Exception]] = []
    done = asyncio.Event()

    def answer(i: int, result: Appended | Exception) -> None:
        answers.append((i, result))
        if len(answers) == len(ops):
            done.set()

    for i, (book_ref, op) in enumerate(ops):
        await broker.append_then(book_ref, op, lambda r, i=i: answer(i, r))
    await asyncio.wait_for(done.wait(), 5)
    assert [i for i, _ in answers] == list(range(len(ops)))  # answered in the order queued
    return [result for _, result in answers]


async def settle(sink: Recorder, book_ref: str, count: int) -> None:
    for _ in range(200):
        if len(sink.ops(book_ref)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(sink.ops(book_ref))} of {count} ops arrived")


async def test_duplicate_ids_within_one_batch(make_broker: Make) -> None:
    broker, sink = await make_broker()
    b = book()
    await broker.listen(b)
    a1, a2 = new_op(broker, "dev-a", "x", 1), new_op(broker, "dev-a", "x", 2)
    a3, other = new_op(broker, "dev-a", "y", 3), new_op(broker, "dev-b", "x", 4)
    first = await in_one_turn(broker, [(b, a1), (b, a2), (b, a3), (b, other)])
    assert first == [
        Appended(1, a1.now, False),
        Appended(1, a1.now, True),  # the same id again: the first seq, not relayed
        Appended(2, a3.now, False),
        Appended(3, other.now, False),  # ids are per device
    ]
    await settle(sink, b, 3)
    assert len(sink.messages) == 1  # one message for the book's batch
    assert [(seq, op["payload"]) for seq, _, op in sink.ops(b)] == [
        (1, a1.payload),
        (2, a3.payload),
        (3, other.payload),
    ]
    # A later batch retrying both ids of dev-a: duplicates, nothing published.
    again = await in_one_turn(broker, [(b, a2), (b, a3)])
    assert again == [Appended(1, a1.now, True), Appended(2, a3.now, True)]
    history = await broker.history(b, 0, None, 10)
    assert history.lines == [line for message in sink.messages for line in message[3]]


async def test_ids_an_earlier_version_kept_per_device_still_answer_retries(
    make_broker: Make, redis_url: str
) -> None:
    """An upgrade moves the client ids an earlier version kept in one hash per device and
    day into their book's hash of that day: a retry sent across it is still acked with
    its first seq and not relayed again."""
    broker, _ = await make_broker()
    b = book()
    a, other = new_op(broker, "dev-a", "x", 1), new_op(broker, "dev-b", "x", 2)
    assert await in_one_turn(broker, [(b, a), (b, other)]) == [
        Appended(1, a.now, False),
        Appended(2, other.now, False),
    ]
    # The same ids, as the earlier version kept them.
    r = aioredis.from_url(redis_url)
    day = a.now // 86400
    by_book = f"{redis_broker.PREFIX}{b}:j:{day}"
    ids, ttl = await r.hgetall(by_book), await r.pttl(by_book)
    for field, value in ids.items():
        device, cid = field.decode().split(" ", 1)
        per_device = f"{redis_broker.PREFIX}{b}:i:{device}:{day}"
        await r.hset(per_device, cid, value)
        await r.pexpire(per_device, ttl)
    await r.delete(by_book, redis_broker.IDS_BY_BOOK)

    upgraded, sink = await make_broker()
    await upgraded.listen(b)
    assert await in_one_turn(upgraded, [(b, a), (b, other)]) == [
        Appended(1, a.now, True),
        Appended(2, other.now, True),
    ]
    assert await r.keys(f"{redis_broker.PREFIX}{b}:i:*") == []
    assert 0 < await r.pttl(by_book) <= ttl
    await asyncio.sleep(0.1)
    assert sink.ops(b) == []  # neither relayed again
    await r.aclose()


async def test_two_books_in_one_batch(make_broker: Make) -> None:
    broker, sink = await make_broker()
    b1, b2 = book(), book()
    await broker.listen(b1)
    await broker.listen(b2)
    ops = [(b1 if i % 3 else b2, new_op(broker, f"dev-{i % 2}", f"id-{i}", i)) for i in range(9)]
    results = await in_one_turn(broker, ops)
    seqs: dict[str, int] = {b1: 0, b2: 0}
    for (book_ref, _), result in zip(ops, results, strict=True):
        assert isinstance(result, Appended) and not result.duplicate
        seqs[book_ref] += 1
        assert result.seq == seqs[book_ref]  # each book numbered in the order queued
    await settle(sink, b1, 6)
    await settle(sink, b2, 3)
    assert sorted(m[0] for m in sink.messages) == sorted([b1, b2])  # one message per book
    for book_ref in (b1, b2):
        sent = [op.payload for b, op in ops if b == book_ref]
        got = sink.ops(book_ref)
        assert [seq for seq, _, _ in got] == list(range(1, len(sent) + 1))
        assert [o["seq"] for _, _, o in got] == [seq for seq, _, _ in got]
        assert [o["payload"] for _, _, o in got] == sent
        assert [origin for _, origin, _ in got] == [op.origin for b, op in ops if b == book_ref]
        history = await broker.history(book_ref, 0, None, 100)
        assert [orjson.loads(line)["payload"] for line in history.lines] == sent


async def test_trim_within_and_across_batches(make_broker: Make) -> None:
    broker, _ = await make_broker(
        BacklogLimits(max_ops=3, max_bytes=1 << 20, max_age_s=3600, max_total_bytes=1 << 30)
    )
    b = book()
    await in_one_turn(broker, [(b, new_op(broker, "d", None, i)) for i in range(5)])
    head = await broker.head(b, int(time.time()))
    assert (head.latest_seq, head.oldest_seq, head.retained_ops) == (5, 3, 3)
    history = await broker.history(b, 0, None, 10)
    assert history.gap and history.start == 2
    assert [orjson.loads(line)["seq"] for line in history.lines] == [3, 4, 5]
    texts = [line[len(OP_PREFIX) + len(str(3 + i)) :] for i, line in enumerate(history.lines)]
    assert head.retained_bytes == sum(len(text) for text in texts)  # what is stored
    await in_one_turn(broker, [(b, new_op(broker, "d", None, i)) for i in range(5, 7)])
    history = await broker.history(b, 4, head.epoch, 10)
    assert not history.gap
    assert [orjson.loads(line)["seq"] for line in history.lines] == [5, 6, 7]
    assert history.head.oldest_seq == 5


async def test_trim_by_bytes_and_keeping_nothing(make_broker: Make) -> None:
    text_size = len(
        ',"payload":"cGF5bG9hZA000000","timestamp":'
        f'{int(time.time())},"device_id":"d","relay_timestamp":{int(time.time())}}}'
    )
    two = BacklogLimits(
        max_ops=100, max_bytes=2 * text_size + 1, max_age_s=3600, max_total_bytes=1 << 30
    )
    broker, _ = await make_broker(two)
    b = book()
    await in_one_turn(broker, [(b, new_op(broker, "d", None, i)) for i in range(4)])
    head = await broker.head(b, int(time.time()))
    assert (head.latest_seq, head.oldest_seq) == (4, 3)
    none, _ = await make_broker(
        BacklogLimits(max_ops=0, max_bytes=1 << 20, max_age_s=3600, max_total_bytes=1 << 30)
    )
    b0 = book()
    results = await in_one_turn(none, [(b0, new_op(none, "d", f"i{i}", i)) for i in range(3)])
    assert [r.seq for r in results if isinstance(r, Appended)] == [1, 2, 3]
    head = await none.head(b0, int(time.time()))
    assert (head.latest_seq, head.oldest_seq, head.retained_bytes) == (3, 4, 0)


async def test_a_retry_across_midnight_in_one_turn(make_broker: Make) -> None:
    broker, _ = await make_broker()
    b = book()
    midnight = (int(time.time()) // 86400) * 86400
    before = new_op(broker, "d", "late", 1, now=midnight - 1)
    after = new_op(broker, "d", "late", 1, now=midnight)
    results = await in_one_turn(broker, [(b, before), (b, after)])
    assert results == [Appended(1, midnight - 1, False), Appended(1, midnight - 1, True)]


async def test_more_than_one_batch_in_a_turn(make_broker: Make) -> None:
    broker, sink = await make_broker()
    b = book()
    await broker.listen(b)
    n = redis_broker.MAX_BATCH_OPS + 10
    results = await in_one_turn(broker, [(b, new_op(broker, "d", f"i{i}", i)) for i in range(n)])
    assert [r.seq for r in results if isinstance(r, Appended)] == list(range(1, n + 1))
    await settle(sink, b, n)
    assert len(sink.messages) == 2
    assert [seq for seq, _, _ in sink.ops(b)] == list(range(1, n + 1))


async def test_seq_order_across_two_instances(make_broker: Make) -> None:
    (one, sink_one), (two, sink_two) = await make_broker(), await make_broker()
    b = book()
    await one.listen(b)
    await two.listen(b)
    acked: dict[str, list[int]] = {}

    async def writer(broker: RedisBroker, device: str) -> None:
        for turn in range(20):
            ops = [(b, new_op(broker, device, f"{device}-{turn}-{i}", i)) for i in range(7)]
            results = await in_one_turn(broker, ops)
            acked.setdefault(device, []).extend(
                r.seq for r in results if isinstance(r, Appended) and not r.duplicate
            )
            await asyncio.sleep(0)

    await asyncio.gather(
        *(writer(x, f"{name}{k}") for x, name in ((one, "a"), (two, "b")) for k in range(3))
    )
    total = 2 * 3 * 20 * 7
    every = sorted(seq for seqs in acked.values() for seq in seqs)
    assert every == list(range(1, total + 1))  # never the same seq twice, no hole
    for seqs in acked.values():
        assert seqs == sorted(seqs)  # one writer's ops keep their order
    for sink in (sink_one, sink_two):
        await settle(sink, b, total)
        got = sink.ops(b)
        assert [seq for seq, _, _ in got] == list(range(1, total + 1))  # in seq order, once
        assert [op["seq"] for _, _, op in got] == list(range(1, total + 1))


async def test_a_flushed_script_cache_is_loaded_again(make_broker: Make, redis_url: str) -> None:
    broker, sink = await make_broker()
    b = book()
    await broker.listen(b)
    await in_one_turn(broker, [(b, new_op(broker, "d", "one", 1))])
    r = aioredis.from_url(redis_url)
    await r.script_flush()
    await r.aclose()
    results = await in_one_turn(broker, [(b, new_op(broker, "d", f"n{i}", i)) for i in range(3)])
    assert [r.seq for r in results if isinstance(r, Appended)] == [2, 3, 4]
    await settle(sink, b, 4)
    assert [seq for seq, _, _ in sink.ops(b)] == [1, 2, 3, 4]
    # The try that met NOSCRIPT had pushed and published its texts: neither shows.
    history = await broker.history(b, 0, None, 10)
    assert not history.gap
    assert history.lines == [line for message in sink.messages for line in message[3]]
    r = aioredis.from_url(redis_url)
    assert await r.llen(f"{redis_broker.PREFIX}{b}:l") == 4  # stored once each
    await r.aclose()
    await asyncio.sleep(0.1)
    assert len(sink.ops(b)) == 4


async def test_a_lost_op_list_starts_a_new_epoch(make_broker: Make, redis_url: str) -> None:
    broker, _ = await make_broker()
    b = book()
    await in_one_turn(broker, [(b, new_op(broker, "d", None, i)) for i in range(3)])
    before = await broker.head(b, int(time.time()))
    r = aioredis.from_url(redis_url)
    await r.delete(f"{redis_broker.PREFIX}{b}:l")  # the history, gone; the counter kept
    await r.aclose()
    results = await in_one_turn(broker, [(b, new_op(broker, "d", None, 9))])
    assert [r.seq for r in results if isinstance(r, Appended)] == [1]
    history = await broker.history(b, 3, before.epoch, 10)
    assert history.gap and history.head.epoch != before.epoch  # resumers are told
    assert [orjson.loads(line)["payload"] for line in history.lines] == ["cGF5bG9hZA000009"]


async def test_a_lost_connection_fails_the_batch_then_recovers(
    make_broker: Make, redis_url: str
) -> None:
    broker, _ = await make_broker()
    b = book()
    await in_one_turn(broker, [(b, new_op(broker, "d", "one", 1))])
    proto = broker._cmd.connected
    assert proto is not None and proto.transport is not None
    host, port = proto.transport.get_extra_info("sockname")[:2]
    r = aioredis.from_url(redis_url)
    await r.client_kill_filter(_type="normal", addr=f"{host}:{port}")  # the script connection
    await r.aclose()
    await asyncio.sleep(0.1)
    results = await in_one_turn(broker, [(b, new_op(broker, "d", "two", 2))])
    if isinstance(results[0], Exception):  # the loss was seen with this batch: retried
        results = await in_one_turn(broker, [(b, new_op(broker, "d", "two", 2))])
    assert results == [Appended(2, results[0].relay_timestamp, False)]  # type: ignore[union-attr]
