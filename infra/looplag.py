"""Event-loop lag: how late the loop runs a timer, exported as a Prometheus histogram.

Anything that holds the loop (a long callback, a blocking call, a garbage collection)
delays every socket at once; this makes it visible to operators. It must stay cheap
enough to leave on: one timer every quarter second and one histogram observation.
"""

from __future__ import annotations

import asyncio

from infra.metrics import EVENT_LOOP_LAG

LAG_PERIOD_S = 0.25


async def watch_loop_lag(period_s: float = LAG_PERIOD_S) -> None:
    """Sleep `period_s` again and again; record how much later than asked each wake-up is.

    A sampling monitor: a stall shorter than the period is seen only when a wake-up
    falls inside it, so the histogram's counts estimate how often the loop stalls and
    its upper buckets how long, rather than listing every stall.
    """
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + period_s
        await asyncio.sleep(period_s)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - asked))
