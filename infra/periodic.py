"""Background jobs on a period (sweeps, purges, flushes, heartbeats): run until
cancelled; a failed run is logged and the next one still comes."""

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
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            if trace:
                log.exception(failed)
            else:
                log.warning(failed)
            if failure_pause_s:
                await asyncio.sleep(failure_pause_s)
        await asyncio.sleep(period_s)
