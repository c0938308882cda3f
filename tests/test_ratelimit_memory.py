"""The in-memory limiter store: the same verdicts as `limits`' own memory store, and
keys of devices gone quiet are let go without a walk over every key."""

from __future__ import annotations

import asyncio

import limits.aio.storage.memory as limits_memory
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

import infra.ratelimit_memory as ours
from infra.ratelimit_memory import MemoryWindows


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ours.time, "time", clock.time)
    return clock


# Waits in steps of 0.7 s never put an event exactly a window (60 s) before another
# (no whole number of them makes 60; steps of 0.3 s did, 200 of them), where the two
# stores' boundaries differ: `limits`' own counts an event exactly 60 s old when it
# decides a hit, and not in its window stats; ours never does.
calls = st.lists(
    st.tuples(
        st.integers(0, 40),  # steps of 0.7 s to wait before the call
        st.sampled_from(["a", "b", "c"]),
        st.integers(1, 4),  # cost
        st.booleans(),  # hit, or only test
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(calls)
def test_same_verdicts_as_limits_memory_store(steps: list[tuple[int, str, int, bool]]) -> None:
    """Differential: every hit, test and window stat equals `limits`' own store's."""
    clock = Clock()
    item = RateLimitItemPerMinute(5)
    theirs_storage = MemoryStorage()
    ours_strategy = MovingWindowRateLimiter(MemoryWindows())
    theirs = MovingWindowRateLimiter(theirs_storage)

    async def run() -> None:
        for wait, key, cost, hit in steps:
            clock.now += 0.7 * wait
            if hit:
                assert await ours_strategy.hit(item, key, cost=cost) == await theirs.hit(
                    item, key, cost=cost
                )
            else:
                assert await ours_strategy.test(item, key, cost=cost) == await theirs.test(
                    item, key, cost=cost
                )
            mine = await ours_strategy.get_window_stats(item, key)
            other = await theirs.get_window_stats(item, key)
            assert mine.remaining == other.remaining
            if other.remaining < item.amount:  # an empty window's reset is "now + window"
                assert mine.reset_time == pytest.approx(other.reset_time)
        if theirs_storage.timer is not None:
            theirs_storage.timer.cancel()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ours.time, "time", clock.time)
        patch.setattr(limits_memory.time, "time", clock.time)
        asyncio.run(run())


async def test_a_block_counts_as_its_cost_and_expires_whole(clock: Clock) -> None:
    limiter = MovingWindowRateLimiter(MemoryWindows())
    item = RateLimitItemPerMinute(100)
    assert await limiter.hit(item, "d", cost=50)
    assert await limiter.hit(item, "d", cost=50)
    assert not await limiter.hit(item, "d")
    assert (await limiter.get_window_stats(item, "d")).remaining == 0
    clock.now += 60.5
    assert (await limiter.get_window_stats(item, "d")).remaining == 100
    assert await limiter.hit(item, "d", cost=100)
    assert not await limiter.hit(item, "e", cost=101)  # more than the limit: never


async def test_quiet_keys_are_dropped_as_other_keys_are_used(clock: Clock) -> None:
    store = MemoryWindows()
    limiter = MovingWindowRateLimiter(store)
    item = RateLimitItemPerMinute(5)
    for n in range(1000):
        await limiter.hit(item, f"gone-{n}")
    assert len(store._windows[60]) == 1000
    clock.now += 61  # a window later every one of them is idle
    for _ in range(200):
        await limiter.hit(item, "busy")
        clock.now += 0.001
    # Each call let go of a few quiet keys (least recently used first): memory follows
    # the devices still active, with no walk over every key.
    assert len(store._windows[60]) == 1000 - 4 * 200 + 1
    for _ in range(60):
        await limiter.hit(item, "busy")
    assert list(store._windows[60]) == [item.key_for("busy")]
    await store.reset()
    assert store._windows == {}


async def test_a_key_used_within_its_window_is_kept(clock: Clock) -> None:
    store = MemoryWindows()
    limiter = MovingWindowRateLimiter(store)
    item = RateLimitItemPerMinute(2)
    assert await limiter.hit(item, "old")
    assert await limiter.hit(item, "old")
    clock.now += 30
    for n in range(50):
        await limiter.hit(item, f"other-{n}")
    assert not await limiter.hit(item, "old")  # its two hits are still in the window
    await limiter.clear(item, "old")
    assert await limiter.hit(item, "old")
