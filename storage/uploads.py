"""What photos and snapshots share: an upload reserved under the book's quota, the check
of the uploaded object, and the deletions that follow (withdrawn, superseded, abandoned
or erased objects, and the ones the store refused, retried by the sweeper).

Domain code: no HTTP here. Both kinds keep rows with `book_ref`, `size_bytes`, a status
and times, and objects under `{kind}/{book_ref}/{id}`; never a raw id, never the bytes.
Any blob-store failure is `503 S3_ERROR` with nothing half-recorded.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass
from typing import ClassVar

from infra.clock import Clock
from infra.db import Database, Queries
from infra.errors import ApiError, Unavailable
from storage.blobs import BlobStore, BlobStoreError, SignedPut

log = logging.getLogger("homepocket.storage")

PENDING = "pending"
COMPLETE = "complete"
ABANDON_AFTER_S = 24 * 3600
# An object deleted while its upload URL still works (or an erased book's folder) is
# deleted again once that URL has expired, so a late PUT leaves nothing behind.
LATE_UPLOAD_MARGIN_S = 60
SWEEP_BATCH = 200
MIB = 1024 * 1024


@dataclass(frozen=True)
class Kind:
    """One kind of object: its table (also the first segment of its keys) and id column."""

    table: str
    id_column: str

    def key(self, book_ref: str, object_id: str) -> str:
        return f"{self.table}/{book_ref}/{object_id}"

    def prefix(self, book_ref: str) -> str:
        return f"{self.table}/{book_ref}/"


PHOTOS = Kind("photos", "photo_id")
SNAPSHOTS = Kind("snapshots", "snapshot_id")
KINDS = {kind.table: kind for kind in (PHOTOS, SNAPSHOTS)}


@dataclass(frozen=True)
class Stored:
    """What the server keeps of every uploaded object; each kind adds its id column
    (and snapshots their position). Fields are the table's columns."""

    kind: ClassVar[Kind]
    book_ref: str
    size_bytes: int
    status: str
    created_at: int
    completed_at: int | None

    @property
    def object_id(self) -> str:
        return str(getattr(self, self.kind.id_column))

    @property
    def key(self) -> str:
        return self.kind.key(self.book_ref, self.object_id)


@dataclass(frozen=True)
class Limits:
    photo_max_bytes: int
    book_quota_bytes: int
    url_ttl_s: int = 300
    abandon_after_s: int = ABANDON_AFTER_S
    snapshot_max_bytes: int = 64 * MIB


def new_id() -> str:
    return secrets.token_hex(16)


def s3_error() -> ApiError:
    return Unavailable("S3_ERROR", "s3")


class Uploads:
    def __init__(self, db: Database, store: BlobStore, clock: Clock, limits: Limits) -> None:
        self.db = db
        self.store = store
        self.clock = clock
        self.limits = limits

    def now(self) -> int:
        return int(self.clock.now())

    async def reserve(self, pending: Stored) -> SignedPut:
        """Insert the pending row if the book's quota has room, then sign the PUT URL; a
        signing failure takes the row back."""
        kind, book_ref = pending.kind, pending.book_ref
        row = asdict(pending)
        columns = ", ".join(row)
        places = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        async with self.db.transaction() as tx:
            await self.lock_book(tx, book_ref)
            used = await self.usage(book_ref, tx)
            if used + pending.size_bytes > self.limits.book_quota_bytes:
                raise ApiError(
                    "QUOTA_EXCEEDED",
                    "The book's storage quota is used up.",
                    {"quota_bytes": self.limits.book_quota_bytes, "used_bytes": used},
                )
            await tx.execute(
                f"INSERT INTO {kind.table} ({columns}) VALUES ({places})", *row.values()
            )
        try:
            return await self.store.presign_put(
                pending.key, pending.size_bytes, self.limits.url_ttl_s
            )
        except BlobStoreError as exc:
            await self.db.execute(
                f"DELETE FROM {kind.table} WHERE {kind.id_column} = $1", pending.object_id
            )
            log.warning("blob store refused to sign", extra={"error": str(exc)})
            raise s3_error() from None

    async def lock_book(self, tx: Queries, book_ref: str) -> None:
        """Serialise quota checks and snapshot completions of one book. SQLite
        transactions are already exclusive."""
        if self.db.dialect == "postgresql":
            await tx.execute("SELECT 1 FROM books WHERE book_ref = $1 FOR UPDATE", book_ref)

    async def usage(self, book_ref: str, q: Queries | None = None) -> int:
        """Bytes counted against the quota: completed and pending photos and snapshots."""
        sums = " + ".join(
            f"(SELECT COALESCE(SUM(size_bytes), 0) FROM {kind.table} WHERE book_ref = $1)"
            for kind in KINDS.values()
        )
        row = await (q or self.db).fetchrow(f"SELECT {sums} AS used", book_ref)
        return int(row["used"]) if row else 0

    async def check_object(self, key: str, size_bytes: int) -> None:
        """The uploaded object is there with the declared size, and kept: absent → 409
        UPLOAD_INCOMPLETE; another size → the object is deleted, 400."""
        try:
            size = await self.store.head(key)
            if size is None:
                raise ApiError("UPLOAD_INCOMPLETE", "The upload has not arrived yet.")
            if size != size_bytes:
                await self.store.delete(key)
                raise ApiError(
                    "VALIDATION_ERROR",
                    "size_bytes: the uploaded object does not have the declared size",
                    {"field": "size_bytes"},
                )
            await self.store.mark_complete(key)
        except BlobStoreError as exc:
            log.warning("blob store refused a check", extra={"error": str(exc)})
            raise s3_error() from None

    async def presign_get(self, key: str) -> str:
        try:
            return await self.store.presign_get(key, self.limits.url_ttl_s)
        except BlobStoreError as exc:
            log.warning("blob store refused to sign", extra={"error": str(exc)})
            raise s3_error() from None

    async def delete_late(self, tx: Queries, key: str, created_at: int, now: bool) -> None:
        """Queue the object's deletion: at once if `now`, and again after its upload URL
        expires while that URL still works."""
        url_expired_at = created_at + self.limits.url_ttl_s
        when = [self.now()] if now else []
        if url_expired_at >= self.now():
            when.append(url_expired_at + LATE_UPLOAD_MARGIN_S)
        if when:
            await tx.executemany(
                "INSERT INTO blob_deletions (target, not_before) VALUES ($1, $2)",
                [(key, at) for at in when],
            )

    async def erase_book(self, book_ref: str) -> None:
        """Rows go now; the folders are emptied now if the store answers, else by the
        sweeper, and swept once more after the last URL issued before now expires."""
        now = self.now()
        later = now + self.limits.url_ttl_s + LATE_UPLOAD_MARGIN_S
        prefixes = [kind.prefix(book_ref) for kind in KINDS.values()]
        async with self.db.transaction() as tx:
            for kind in KINDS.values():
                await tx.execute(f"DELETE FROM {kind.table} WHERE book_ref = $1", book_ref)
            await tx.executemany(
                "INSERT INTO blob_deletions (target, not_before) VALUES ($1, $2)",
                [(prefix, at) for prefix in prefixes for at in (now, later)],
            )
        for prefix in prefixes:
            await self.drain_deletions(only=prefix)

    async def sweep(self) -> tuple[int, int]:
        """Abandoned uploads out, refused deletions retried: (abandoned, deletions done)."""
        abandoned = 0
        for kind in KINDS.values():
            abandoned += await self._sweep_abandoned(kind)
        return abandoned, await self.drain_deletions()

    async def _sweep_abandoned(self, kind: Kind) -> int:
        cutoff = self.now() - self.limits.abandon_after_s
        rows = await self.db.fetch(
            f"SELECT {kind.id_column} AS id, book_ref FROM {kind.table}"
            " WHERE status = $1 AND created_at < $2 ORDER BY created_at LIMIT $3",
            PENDING,
            cutoff,
            SWEEP_BATCH,
        )
        abandoned = 0
        for row in rows:
            async with self.db.transaction() as tx:
                gone = await tx.execute(
                    f"DELETE FROM {kind.table} WHERE {kind.id_column} = $1 AND status = $2",
                    row["id"],
                    PENDING,
                )
                if gone:
                    abandoned += 1
                    await tx.execute(
                        "INSERT INTO blob_deletions (target, not_before) VALUES ($1, $2)",
                        kind.key(row["book_ref"], row["id"]),
                        self.now(),
                    )
        return abandoned

    async def drain_deletions(self, only: str | None = None) -> int:
        """Try every due deletion (or those of one target) once; a refused one waits
        longer each time (at most an hour)."""
        due = await self.db.fetch(
            "SELECT id, target, attempts FROM blob_deletions WHERE not_before <= $1"
            " AND (CAST($2 AS TEXT) IS NULL OR target = $2) ORDER BY not_before, id LIMIT $3",
            self.now(),
            only,
            SWEEP_BATCH,
        )
        done = 0
        for entry in due:
            try:
                await self._delete_target(entry["target"])
            except BlobStoreError as exc:
                wait = min(3600, 30 * 2 ** min(int(entry["attempts"]), 7))
                await self.db.execute(
                    "UPDATE blob_deletions SET attempts = attempts + 1, not_before = $2"
                    " WHERE id = $1",
                    entry["id"],
                    self.now() + wait,
                )
                log.warning("blob delete refused; will retry", extra={"error": str(exc)})
                continue
            await self.db.execute("DELETE FROM blob_deletions WHERE id = $1", entry["id"])
            done += 1
        return done

    async def _delete_target(self, target: str) -> None:
        if not target.endswith("/"):
            await self.store.delete(target)
            return
        # A folder: only objects no row names (a book re-created with the same book_id
        # keeps its new photos and snapshots).
        keys = await self.store.list_keys(target)
        if not keys:
            return
        folder, book_ref = target.split("/")[:2]
        kind = KINDS[folder]
        rows = await self.db.fetch(
            f"SELECT {kind.id_column} AS id FROM {kind.table} WHERE book_ref = $1", book_ref
        )
        kept = {r["id"] for r in rows}
        await self.store.delete_many([k for k in keys if k.rsplit("/", 1)[1] not in kept])
