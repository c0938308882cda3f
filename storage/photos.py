"""Photos of a book: reserve an upload, check it, hand out downloads, delete, erase, sweep.

Domain code: no HTTP here. The server keeps per photo only `photo_id`, `book_ref`,
`size_bytes`, a status and times; never the bytes, a transaction id or a mime type.
Object keys are `photos/{book_ref}/{photo_id}`. Errors are `ApiError` with the
contract's codes; any blob-store failure is `503 S3_ERROR` with nothing half-recorded.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from infra.clock import Clock
from infra.db import Database, Queries, Row
from infra.errors import ApiError, Unavailable
from storage.blobs import BlobStore, BlobStoreError, SignedPut

log = logging.getLogger("homepocket.storage")

PENDING = "pending"
COMPLETE = "complete"
ABANDON_AFTER_S = 24 * 3600
# An erased book's folder is swept again once every URL issued before the erasure has
# expired, so a late PUT through such a URL leaves nothing behind.
LATE_UPLOAD_MARGIN_S = 60
SWEEP_BATCH = 200
_COLUMNS = "photo_id, book_ref, size_bytes, status, created_at, completed_at"


def new_photo_id() -> str:
    return secrets.token_hex(16)


def photo_key(book_ref: str, photo_id: str) -> str:
    return f"photos/{book_ref}/{photo_id}"


def book_prefix(book_ref: str) -> str:
    return f"photos/{book_ref}/"


@dataclass(frozen=True)
class Limits:
    photo_max_bytes: int
    book_quota_bytes: int
    url_ttl_s: int = 300
    abandon_after_s: int = ABANDON_AFTER_S


@dataclass(frozen=True)
class Photo:
    photo_id: str
    book_ref: str
    size_bytes: int
    status: str
    created_at: int
    completed_at: int | None

    @property
    def key(self) -> str:
        return photo_key(self.book_ref, self.photo_id)

    @classmethod
    def from_row(cls, row: Row) -> Photo:
        return cls(**row)


@dataclass(frozen=True)
class Upload:
    photo: Photo
    put: SignedPut


def s3_error() -> ApiError:
    return Unavailable("S3_ERROR", "s3")


def not_found() -> ApiError:
    return ApiError("PHOTO_NOT_FOUND", "No such photo.")


class Photos:
    def __init__(self, db: Database, store: BlobStore, clock: Clock, limits: Limits) -> None:
        self.db = db
        self.store = store
        self.clock = clock
        self.limits = limits

    def now(self) -> int:
        return int(self.clock.now())

    def check_size(self, size_bytes: int) -> None:
        if size_bytes > self.limits.photo_max_bytes:
            raise ApiError(
                "PHOTO_TOO_LARGE",
                "The photo is larger than allowed.",
                {"limit": self.limits.photo_max_bytes},
            )

    async def begin_upload(self, book_ref: str, size_bytes: int) -> Upload:
        """Reserve quota with a pending row, then sign the URL; a signing failure takes
        the row back."""
        self.check_size(size_bytes)
        photo = Photo(new_photo_id(), book_ref, size_bytes, PENDING, self.now(), None)
        async with self.db.transaction() as tx:
            await self._lock_book(tx, book_ref)
            used = await self.usage(book_ref, tx)
            if used + size_bytes > self.limits.book_quota_bytes:
                raise ApiError(
                    "QUOTA_EXCEEDED",
                    "The book's storage quota is used up.",
                    {"quota_bytes": self.limits.book_quota_bytes, "used_bytes": used},
                )
            await tx.execute(
                "INSERT INTO photos (photo_id, book_ref, size_bytes, status, created_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                photo.photo_id,
                book_ref,
                size_bytes,
                PENDING,
                photo.created_at,
            )
        try:
            put = await self.store.presign_put(photo.key, size_bytes, self.limits.url_ttl_s)
        except BlobStoreError as exc:
            await self.db.execute("DELETE FROM photos WHERE photo_id = $1", photo.photo_id)
            log.warning("blob store refused to sign", extra={"error": str(exc)})
            raise s3_error() from None
        return Upload(photo, put)

    async def _lock_book(self, tx: Queries, book_ref: str) -> None:
        """Serialise quota checks of one book. SQLite transactions are already exclusive."""
        if self.db.dialect == "postgresql":
            await tx.execute("SELECT 1 FROM books WHERE book_ref = $1 FOR UPDATE", book_ref)

    async def usage(self, book_ref: str, q: Queries | None = None) -> int:
        """Bytes counted against the quota: completed and pending photos."""
        row = await (q or self.db).fetchrow(
            "SELECT COALESCE(SUM(size_bytes), 0) AS used FROM photos WHERE book_ref = $1",
            book_ref,
        )
        return int(row["used"]) if row else 0

    async def find(self, book_ref: str, photo_id: str) -> Photo | None:
        """A photo of this book only: another book's photo is as absent as a made-up id."""
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM photos WHERE photo_id = $1 AND book_ref = $2",
            photo_id,
            book_ref,
        )
        return Photo.from_row(row) if row else None

    async def complete(self, book_ref: str, photo_id: str) -> Photo:
        photo = await self.find(book_ref, photo_id)
        if photo is None:
            raise not_found()
        if photo.status == COMPLETE:
            return photo  # repeated: the same answer
        try:
            size = await self.store.head(photo.key)
            if size is None:
                raise ApiError("UPLOAD_INCOMPLETE", "The upload has not arrived yet.")
            if size != photo.size_bytes:
                await self.store.delete(photo.key)
                raise ApiError(
                    "VALIDATION_ERROR",
                    "size_bytes: the uploaded object does not have the declared size",
                    {"field": "size_bytes"},
                )
            await self.store.mark_complete(photo.key)
        except BlobStoreError as exc:
            log.warning("blob store refused a check", extra={"error": str(exc)})
            raise s3_error() from None
        now = self.now()
        await self.db.execute(
            "UPDATE photos SET status = $2, completed_at = $3 WHERE photo_id = $1 AND status = $4",
            photo.photo_id,
            COMPLETE,
            now,
            PENDING,
        )
        done = await self.find(book_ref, photo_id)
        if done is None or done.status != COMPLETE:  # swept meanwhile
            raise not_found()
        return done

    async def download(self, book_ref: str, photo_id: str) -> tuple[Photo, str]:
        photo = await self.find(book_ref, photo_id)
        if photo is None or photo.status != COMPLETE:
            raise not_found()
        try:
            url = await self.store.presign_get(photo.key, self.limits.url_ttl_s)
        except BlobStoreError as exc:
            log.warning("blob store refused to sign", extra={"error": str(exc)})
            raise s3_error() from None
        return photo, url

    async def delete(self, book_ref: str, photo_id: str) -> None:
        """Object first: if the store refuses, the row stays and the client may retry."""
        photo = await self.find(book_ref, photo_id)
        if photo is None:
            raise not_found()
        try:
            await self.store.delete(photo.key)
        except BlobStoreError as exc:
            log.warning("blob store refused a delete", extra={"error": str(exc)})
            raise s3_error() from None
        now = self.now()
        url_expired_at = photo.created_at + self.limits.url_ttl_s
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM photos WHERE photo_id = $1", photo.photo_id)
            if url_expired_at >= now:  # its upload URL still works: delete again later
                await tx.execute(
                    "INSERT INTO blob_deletions (target, not_before) VALUES ($1, $2)",
                    photo.key,
                    url_expired_at + LATE_UPLOAD_MARGIN_S,
                )

    async def erase_book(self, book_ref: str) -> None:
        """Rows go now; the folder is emptied now if the store answers, else by the
        sweeper, and swept once more after the last URL issued before now expires."""
        now = self.now()
        prefix = book_prefix(book_ref)
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM photos WHERE book_ref = $1", book_ref)
            await tx.executemany(
                "INSERT INTO blob_deletions (target, not_before) VALUES ($1, $2)",
                [(prefix, now), (prefix, now + self.limits.url_ttl_s + LATE_UPLOAD_MARGIN_S)],
            )
        await self.drain_deletions(only=prefix)

    async def sweep(self) -> tuple[int, int]:
        """Abandoned uploads out, refused deletions retried: (abandoned, deletions done)."""
        cutoff = self.now() - self.limits.abandon_after_s
        rows = await self.db.fetch(
            "SELECT photo_id, book_ref FROM photos WHERE status = $1 AND created_at < $2"
            " ORDER BY created_at LIMIT $3",
            PENDING,
            cutoff,
            SWEEP_BATCH,
        )
        abandoned = 0
        for row in rows:
            async with self.db.transaction() as tx:
                gone = await tx.execute(
                    "DELETE FROM photos WHERE photo_id = $1 AND status = $2",
                    row["photo_id"],
                    PENDING,
                )
                if gone:
                    abandoned += 1
                    await tx.execute(
                        "INSERT INTO blob_deletions (target, not_before) VALUES ($1, $2)",
                        photo_key(row["book_ref"], row["photo_id"]),
                        self.now(),
                    )
        return abandoned, await self.drain_deletions()

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
        # A folder: only objects no photo row names (a book re-created with the same
        # book_id keeps its new photos).
        keys = await self.store.list_keys(target)
        if not keys:
            return
        ids = [k.rsplit("/", 1)[1] for k in keys]
        book_ref = target.split("/")[1]
        rows = await self.db.fetch("SELECT photo_id FROM photos WHERE book_ref = $1", book_ref)
        kept = {r["photo_id"] for r in rows}
        await self.store.delete_many([k for k, i in zip(keys, ids, strict=True) if i not in kept])
