"""Full garbage collections on a schedule instead of whenever CPython's rule fires.

A full collection walks every tracked object outside the frozen startup heap and holds
the event loop meanwhile: with 1,000 sockets open and the embedded backlog's client-id
index filling, 80-90 ms, every half minute at a thousand ops a second (measured with
gc.callbacks; relay/README.md, "What stalled the loop"). The index has since left the
collector's walk (a dict of only str and int is not tracked). Young garbage is still
collected as usual by generations 0 and 1; only objects that survived two collections
and then became cyclic garbage wait for the next scheduled full collection.
"""

from __future__ import annotations

import gc
import logging
import time

from infra.periodic import every

log = logging.getLogger("homepocket")
FULL_COLLECTION_EVERY_S = 300.0
# Generation 2 collects when more gen-1 collections than this have run (and a quarter
# of its objects are new): a threshold no server reaches turns the automatic ones off.
NEVER = 2**31 - 1


def schedule_full_collections() -> None:
    """Leave generations 0 and 1 as they are; stop automatic full collections."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


def full_collection() -> tuple[int, float]:
    """One full collection now: (objects collected, seconds it held the loop)."""
    started = time.perf_counter()
    collected = gc.collect()
    return collected, time.perf_counter() - started


async def collect_forever(period_s: float = FULL_COLLECTION_EVERY_S) -> None:
    """A full collection every `period_s` while automatic ones are off (see `serve`)."""

    async def job() -> None:
        if gc.get_threshold()[2] != NEVER:
            return  # CPython's own rule is in charge (tests, embedding apps)
        collected, took_s = full_collection()
        log.info("full collection", extra={"collected": collected, "ms": round(took_s * 1000)})

    await every(period_s, job, failed="full collection failed", log=log, start_now=False)
