"""infra.periodic.every: the loop behind every sweep, purge, flush and heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest

from infra.periodic import every

log = logging.getLogger("homepocket.test.periodic")


async def test_a_failed_run_is_logged_and_the_next_one_still_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("first run fails")

    task = asyncio.ensure_future(every(0.01, job, failed="job failed", log=log))
    while len(runs) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    failures = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert [r.levelno for r in failures] == [logging.ERROR]  # logged with its traceback


async def test_start_after_one_period_and_log_without_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("always fails")

    task = asyncio.ensure_future(
        every(0.2, job, failed="quiet failure", log=log, start_now=False, trace=False)
    )
    await asyncio.sleep(0.05)
    assert runs == 0  # waits one period first
    await asyncio.sleep(0.25)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs == 1
    failures = [r for r in caplog.records if r.getMessage() == "quiet failure"]
    assert [r.levelno for r in failures] == [logging.WARNING]  # the message alone


async def test_a_cancel_the_job_swallowed_still_ends_the_loop() -> None:
    swallowed = 0

    async def job() -> None:
        nonlocal swallowed
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed += 1
            if swallowed > 1:
                raise  # a loop that outlived the first cancel ends with the second
            # what a library that drops the cancel does

    task = asyncio.ensure_future(every(0.01, job, failed="job failed", log=log))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)


async def test_a_loop_on_redis_ends_whenever_it_is_cancelled(redis_url: str) -> None:
    """redis-py on Python 3.11 drops some cancels (the write's asyncio.wait_for): a sweep
    or heartbeat on Redis could outlive its cancel, and the shutdown waiting for it hung."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, socket_timeout=5)
    stuck = False

    async def ping() -> None:
        if stuck:
            raise asyncio.CancelledError  # ends a loop that outlived its cancel
        await client.ping()

    try:
        for attempt in range(300):
            task = asyncio.ensure_future(every(0, ping, failed="ping failed", log=log))
            await asyncio.sleep(random.random() * 0.002)  # anywhere in a ping
            task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), 1)
            except asyncio.CancelledError:
                continue
            except TimeoutError:
                stuck = True
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise AssertionError(f"cancel {attempt} did not end the loop") from None
    finally:
        await client.aclose()
