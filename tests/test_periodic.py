"""infra.periodic.every: the loop behind every sweep, purge, flush and heartbeat."""

from __future__ import annotations

import asyncio
import logging

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
