"""Where photo bytes live: the blob-store interface and the one factory that picks a store.

A store keeps client ciphertext under keys that name no raw id (`photos/{book_ref}/{id}`)
and hands out short-lived signed URLs so bytes never pass through the API handlers.
Nothing here opens, parses or logs a blob's contents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from infra.clock import Clock
from infra.settings import Settings


class BlobStoreError(Exception):
    """The store refused or did not answer; callers answer `503 S3_ERROR`."""


@dataclass(frozen=True)
class SignedPut:
    """An upload URL and the exact headers the client must send with its PUT."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)


class BlobStore(Protocol):
    name: str  # "s3" or "local": the /ready check and logs name it

    async def start(self) -> None:
        """Open clients, check the store is reachable (raise ConfigError if not)."""
        ...

    async def close(self) -> None: ...

    async def presign_put(self, key: str, size_bytes: int, expires_s: int) -> SignedPut:
        """A PUT URL whose signature binds Content-Length to `size_bytes`."""
        ...

    async def presign_get(self, key: str, expires_s: int) -> str: ...

    async def head(self, key: str) -> int | None:
        """The stored object's size, or None when there is no object."""
        ...

    async def mark_complete(self, key: str) -> None:
        """Tell the store the upload is kept (S3: drop the tag its lifecycle rule expires)."""
        ...

    async def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None: ...

    async def list_keys(self, prefix: str) -> list[str]: ...

    async def ping(self) -> None: ...


def open_blob_store(settings: Settings, clock: Clock) -> BlobStore:
    """S3 when S3_BUCKET is set (aioboto3, imported lazily), else the local folder."""
    if settings.s3_bucket:
        from storage.s3 import S3BlobStore

        return S3BlobStore(
            settings.s3_bucket,
            settings.s3_endpoint_url,
            settings.aws_region,
            timeout_s=settings.backend_timeout_s,
        )
    from storage.local import LocalBlobStore

    return LocalBlobStore(settings, clock)
