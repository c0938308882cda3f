"""Audit events (SPEC 7): one per security-relevant action, hashed identifiers only.

Written to the metadata store and the log; purged after the retention period by a
loop that runs inside the server.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from infra.clock import Clock, rfc3339
from infra.db import Database

log = logging.getLogger("homepocket.audit")


@dataclass(frozen=True)
class Origin:
    """Where a call came from, already hashed: what an audit entry may keep."""

    ip_ref: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


class Audit:
    def __init__(self, db: Database, clock: Clock, retention_s: int) -> None:
        self.db = db
        self.clock = clock
        self.retention_s = retention_s

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

    async def erase_book(self, book_ref: str, keep_event: str = "book_erased") -> None:
        """Only the erasure event itself remains of a book."""
        await self.db.execute(
            "DELETE FROM audit_events WHERE book_ref = $1 AND event_type <> $2",
            book_ref,
            keep_event,
        )

    async def purge_forever(self, every_s: float = 3600.0) -> None:
        while True:
            try:
                removed = await self.purge()
                if removed:
                    log.info("audit purge", extra={"removed": removed})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit purge failed")
            await asyncio.sleep(every_s)
