"""Audit events (docs/CONTRACT.md §7): one per security-relevant action, hashed identifiers only.

Written to the metadata store and the log; purged after the retention period by a
loop that runs inside the server. Refusals a client can provoke at will (auth failures,
rate-limit hits) go through `record_throttled`, so a flood of bad calls cannot become
a flood of database writes. It must never store a raw IP, token or book_id.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from infra.clock import Clock, rfc3339
from infra.db import Database
from infra.metrics import AUDIT_EVENTS
from infra.periodic import every

log = logging.getLogger("homepocket.audit")


@dataclass(frozen=True)
class Origin:
    """Where a call came from, already hashed: what an audit entry may keep."""

    ip_ref: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


class Throttle:
    """At most one event per key per `interval_s`, and at most `budget` events per
    interval in all, on this instance. Bounded memory: the oldest keys are forgotten
    first. What it holds are hashed keys, in memory only."""

    def __init__(self, clock: Clock, interval_s: float = 60.0, budget: int = 120) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self.budget = budget
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self._window_start = 0.0
        self._spent = 0
        self.suppressed = 0

    def allow(self, key: Hashable) -> bool:
        now = self.clock.now()
        if now - self._window_start >= self.interval_s:
            self._window_start, self._spent = now, 0
        while self._last:  # forget keys whose interval is over (oldest first)
            oldest_key, seen = next(iter(self._last.items()))
            if now - seen < self.interval_s:
                break
            del self._last[oldest_key]
        if key in self._last or self._spent >= self.budget:
            self.suppressed += 1
            return False
        self._last[key] = now
        self._spent += 1
        return True


class Audit:
    def __init__(self, db: Database, clock: Clock, retention_s: int) -> None:
        self.db = db
        self.clock = clock
        self.retention_s = retention_s
        self.throttle = Throttle(clock)

    async def record(
        self,
        event_type: str,
        action: str,
        result: str,
        *,
        device_id: str | None = None,
        book_ref: str | None = None,
        origin: Origin | None = None,
    ) -> None:
        origin = origin or Origin()
        agent = (origin.user_agent or "")[:200].replace("\x00", "") or None
        now = int(self.clock.now())
        await self.db.execute(
            "INSERT INTO audit_events (event_type, action, result, device_id, book_ref,"
            " ip_ref, user_agent, created_at, request_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            event_type,
            action,
            result,
            device_id,
            book_ref,
            origin.ip_ref,
            agent,
            now,
            origin.request_id,
        )
        AUDIT_EVENTS.labels(event_type, result).inc()
        log.info(
            "audit",
            extra={
                "event_type": event_type,
                "action": action,
                "result": result,
                "device_id": device_id,
                "book_ref": book_ref,
                "ip_ref": origin.ip_ref,
                "request_id": origin.request_id,
            },
        )

    async def record_throttled(
        self,
        key: Hashable,
        event_type: str,
        action: str,
        result: str,
        *,
        device_id: str | None = None,
        book_ref: str | None = None,
        origin: Origin | None = None,
    ) -> bool:
        """`record`, unless an event of the same key was recorded in the last minute
        (or the instance's budget for the minute is spent). Never raises: a refusal
        must stay a refusal, not become a 500 because the store is slow."""
        if not self.throttle.allow(key):
            return False
        try:
            await self.record(
                event_type, action, result, device_id=device_id, book_ref=book_ref, origin=origin
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("audit write failed", extra={"event_type": event_type})
            return False
        return True

    async def for_device(
        self, device_id: str, before: int | None, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.db.fetch(
            "SELECT id, event_type, action, result, device_id, book_ref, ip_ref, user_agent,"
            " created_at, request_id FROM audit_events WHERE device_id = $1 AND id < $2"
            " ORDER BY id DESC LIMIT $3",
            device_id,
            before if before is not None else 2**62,
            limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        events = [
            {
                **{k: v for k, v in r.items() if k not in ("id", "created_at")},
                "event_id": r["id"],
                "timestamp": rfc3339(r["created_at"]),
            }
            for r in rows
        ]
        return events, (rows[-1]["id"] if more and rows else None)

    async def purge(self) -> int:
        cutoff = int(self.clock.now()) - self.retention_s
        return await self.db.execute("DELETE FROM audit_events WHERE created_at < $1", cutoff)

    async def erase_book(
        self, book_ref: str, device_ids: Sequence[str] = (), keep_event: str = "book"
    ) -> None:
        """Only the erasure event itself remains of a book: the book's events go, and so
        do the events of its devices (an event without a book_ref still ties a device to
        its book through the device_id)."""
        await self.db.execute(
            "DELETE FROM audit_events WHERE book_ref = $1 AND event_type <> $2",
            book_ref,
            keep_event,
        )
        for device_id in device_ids:
            await self.db.execute(
                "DELETE FROM audit_events WHERE device_id = $1 AND event_type <> $2",
                device_id,
                keep_event,
            )

    async def purge_forever(self, every_s: float = 3600.0) -> None:
        async def purge() -> None:
            removed = await self.purge()
            if removed:
                log.info("audit purge", extra={"removed": removed})

        await every(every_s, purge, failed="audit purge failed", log=log)
