"""Background jobs on a period (sweeps, purges, flushes, heartbeats): run until
cancelled, even when a job's library swallowed the cancel; a failed run is logged
and the next one still comes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def every(
    period_s: float,
    job: Callable[[], Awaitable[object]],
    *,
    failed: str,
    log: logging.Logger,
    start_now: bool = True,
    trace: bool = True,
    failure_pause_s: float = 0.0,
) -> None:
    """Run `job` every `period_s` seconds, the first time at once or after one period.

    A failure is logged as `failed` (with its traceback when `trace`, else the message
    alone) and waits `failure_pause_s` more before the usual period.
    """
    if not start_now:
        await asyncio.sleep(period_s)
    task = asyncio.current_task()
    while True:
        pause_s = period_s
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            if trace:
                log.exception(failed)
            else:
                log.warning(failed)
            pause_s += failure_pause_s
        if task is not None and task.cancelling():
            # Cancelled during the job, which swallowed it: on Python 3.11,
            # asyncio.wait_for (redis-py wraps every write in it) drops a cancel that
            # lands as the awaited call completes. A loop that went on would hang the
            # shutdown that waits for it.
            raise asyncio.CancelledError
        await asyncio.sleep(pause_s)
