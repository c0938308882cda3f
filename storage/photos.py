"""Photos of a book: reserve an upload, check it, hand out downloads, delete.

Domain code: no HTTP here. The server keeps per photo only `photo_id`, `book_ref`,
`size_bytes`, a status and times; never the bytes, a transaction id or a mime type.
Object keys are `photos/{book_ref}/{photo_id}`. Quota, the object check, erasure and the
sweeper are shared with snapshots (storage.uploads). Errors are `ApiError` with the
contract's codes; any blob-store failure is `503 S3_ERROR` with nothing half-recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from infra.db import Row
from infra.errors import ApiError
from storage.blobs import BlobStoreError, SignedPut
from storage.uploads import COMPLETE, PENDING, PHOTOS, Kind, Stored, Uploads, new_id, s3_error

log = logging.getLogger("homepocket.storage")

_COLUMNS = "photo_id, book_ref, size_bytes, status, created_at, completed_at"


@dataclass(frozen=True)
class Photo(Stored):
    kind: ClassVar[Kind] = PHOTOS
    photo_id: str

    @classmethod
    def from_row(cls, row: Row) -> Photo:
        return cls(**row)


@dataclass(frozen=True)
class Upload:
    photo: Photo
    put: SignedPut


def not_found() -> ApiError:
    return ApiError("PHOTO_NOT_FOUND", "No such photo.")


class Photos:
    def __init__(self, uploads: Uploads) -> None:
        self.uploads = uploads
        self.db = uploads.db
        self.limits = uploads.limits

    def check_size(self, size_bytes: int) -> None:
        if size_bytes > self.limits.photo_max_bytes:
            raise ApiError(
                "PHOTO_TOO_LARGE",
                "The photo is larger than allowed.",
                {"limit": self.limits.photo_max_bytes},
            )

    async def begin_upload(self, book_ref: str, size_bytes: int) -> Upload:
        """Reserve quota with a pending row, then sign the URL."""
        self.check_size(size_bytes)
        photo = Photo(book_ref, size_bytes, PENDING, self.uploads.now(), None, new_id())
        return Upload(photo, await self.uploads.reserve(photo))

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
        await self.uploads.check_object(photo.key, photo.size_bytes)
        await self.db.execute(
            "UPDATE photos SET status = $2, completed_at = $3 WHERE photo_id = $1 AND status = $4",
            photo.photo_id,
            COMPLETE,
            self.uploads.now(),
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
        return photo, await self.uploads.presign_get(photo.key)

    async def delete(self, book_ref: str, photo_id: str) -> None:
        """Object first: if the store refuses, the row stays and the client may retry."""
        photo = await self.find(book_ref, photo_id)
        if photo is None:
            raise not_found()
        try:
            await self.uploads.store.delete(photo.key)
        except BlobStoreError as exc:
            log.warning("blob store refused a delete", extra={"error": str(exc)})
            raise s3_error() from None
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM photos WHERE photo_id = $1", photo.photo_id)
            await self.uploads.delete_late(tx, photo.key, photo.created_at, now=False)
