"""Sync records: per book, how many ops and bytes went through and when the last one did.

Counts and times only, never content. Kept in memory and flushed in one transaction
every few seconds and at shutdown, so the per-message path never writes the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from infra.db import Database
from infra.periodic import every

log = logging.getLogger("homepocket.relay")
FLUSH_INTERVAL_S = 2.0

_UPSERT = (
    "INSERT INTO sync_records (book_ref, ops_total, bytes_total, last_op_at)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (book_ref) DO UPDATE SET"
    " ops_total = sync_records.ops_total + excluded.ops_total,"
    " bytes_total = sync_records.bytes_total + excluded.bytes_total,"
    " last_op_at = CASE WHEN sync_records.last_op_at IS NULL"
    " OR excluded.last_op_at > sync_records.last_op_at"
    " THEN excluded.last_op_at ELSE sync_records.last_op_at END"
)


@dataclass
class Pending:
    ops: int = 0
    bytes: int = 0
    last_op_at: int = 0


class SyncRecords:
    def __init__(self, db: Callable[[], Database]) -> None:
        self._db = db  # opened with the app, after the relay is built
        self.pending: dict[str, Pending] = {}

    def count(self, book_ref: str, size: int, now: int) -> None:
        entry = self.pending.get(book_ref)
        if entry is None:
            entry = self.pending[book_ref] = Pending()
        entry.ops += 1
        entry.bytes += size
        entry.last_op_at = now

    def forget(self, book_ref: str) -> None:
        """Erasure: counts not yet written must not bring the record back."""
        self.pending.pop(book_ref, None)

    async def read(self, book_ref: str) -> tuple[int, int | None]:
        """(ops_total, last_op_at): the stored record plus what this instance has not flushed."""
        row = await self._db().fetchrow(
            "SELECT ops_total, last_op_at FROM sync_records WHERE book_ref = $1", book_ref
        )
        ops = int(row["ops_total"]) if row else 0
        last = int(row["last_op_at"]) if row and row["last_op_at"] is not None else None
        entry = self.pending.get(book_ref)
        if entry is not None:
            ops += entry.ops
            last = max(last or 0, entry.last_op_at)
        return ops, last

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, {}
        rows = [(ref, e.ops, e.bytes, e.last_op_at) for ref, e in batch.items()]
        try:
            async with self._db().transaction() as tx:
                await tx.executemany(_UPSERT, rows)
        except Exception:
            # Put the counts back so a database hiccup loses nothing; next flush retries.
            for ref, entry in batch.items():
                merged = self.pending.setdefault(ref, Pending())
                merged.ops += entry.ops
                merged.bytes += entry.bytes
                merged.last_op_at = max(merged.last_op_at, entry.last_op_at)
            raise

    async def flush_forever(self) -> None:
        await every(
            FLUSH_INTERVAL_S,
            self.flush,
            failed="sync records flush failed; will retry",
            log=log,
            start_now=False,
            trace=False,
        )
