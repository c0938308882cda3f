"""`Broker.trim_through` on both brokers (embedded, and a real redis-server): the ops a
snapshot covers go, only in its epoch; the head's bookkeeping (oldest seq, retained
bytes, the oldest op's time) stays right for the trims by limits and the appends after."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from relay.broker import BacklogLimits, Broker, NewOp
from relay.embedded import EmbeddedBroker
from relay.redis_broker import RedisBroker
from tests.test_relay_redis_batch import Recorder

LIMITS = BacklogLimits(max_ops=1000, max_bytes=1 << 24, max_age_s=100, max_total_bytes=1 << 30)
T0 = int(time.time())


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["embedded", "redis"])
async def broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Broker, Clock]]:
    clock = Clock()
    made: Broker
    if request.param == "embedded":
        made = EmbeddedBroker(tmp_path, LIMITS, clock)
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisBroker(lambda: aioredis.from_url(url), url, LIMITS, clock)
    await made.start(Recorder())
    yield made, clock
    await made.stop()
    if isinstance(made, RedisBroker):
        await made._r.aclose()


async def append(broker: Broker, book_ref: str, now: int) -> int:
    op = NewOp("d" * 32, None, "c2VhbGVk", now, "", now)
    return (await broker.append(book_ref, op)).seq


async def test_trim_through_keeps_the_head_right(broker: tuple[Broker, Clock]) -> None:
    b, clock = broker
    book_ref = secrets.token_hex(32)
    for at in (T0, T0, T0, T0 + 50, T0 + 50, T0 + 50):
        await append(b, book_ref, at)
    clock.now = T0 + 60
    head = await b.head(book_ref, T0 + 60)
    assert (head.oldest_seq, head.latest_seq) == (1, 6)
    one_op = head.retained_bytes // 6

    await b.trim_through(book_ref, "another-epoch", 5)  # another epoch: nothing goes
    assert (await b.head(book_ref, T0 + 60)) == head
    await b.trim_through(book_ref, head.epoch, 2)
    trimmed = await b.head(book_ref, T0 + 60)
    assert (trimmed.epoch, trimmed.oldest_seq, trimmed.latest_seq) == (head.epoch, 3, 6)
    assert trimmed.retained_bytes == head.retained_bytes - 2 * one_op
    await b.trim_through(book_ref, head.epoch, 1)  # behind what is left: no change
    assert (await b.head(book_ref, T0 + 60)) == trimmed

    # The age limit still finds the oldest op's time: op 3 (at T0) ages out, 4-6 stay.
    clock.now = T0 + 120
    aged = await b.head(book_ref, T0 + 120)
    assert (aged.oldest_seq, aged.retained_ops, aged.retained_bytes) == (4, 3, 3 * one_op)
    history = await b.history(book_ref, 2, head.epoch, 100)
    assert (history.gap, history.start, len(history.lines)) == (True, 3, 3)

    # Through everything (and beyond latest): nothing retained, then appends go on.
    assert await append(b, book_ref, T0 + 120) == 7
    await b.trim_through(book_ref, head.epoch, 99)
    empty = await b.head(book_ref, T0 + 120)
    assert (empty.oldest_seq, empty.latest_seq, empty.retained_bytes) == (8, 7, 0)
    assert await append(b, book_ref, T0 + 121) == 8
    after = await b.history(book_ref, 7, head.epoch, 100)
    assert (after.gap, after.start, after.head.oldest_seq) == (False, 7, 8)
    assert len(after.lines) == 1 and '"seq":8,' in after.lines[0]
    assert after.head.retained_bytes == one_op and after.head.epoch == head.epoch
