"""The local-folder blob store (embedded default): objects are files under the data dir,
and the app itself serves their signed URLs (storage.blob_routes).

URLs are `{PUBLIC_URL}/blobs/{key}?expires=…&length=…&signature=…`, signed with
HMAC-SHA256 under a key derived from ID_HASH_KEY with its own domain separator, so a
URL proves the server made it, for that method, key, length and expiry. Files are
written to a temporary name and renamed only once exactly the signed length arrived.
Never reads a blob into memory whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import anyio

from infra.clock import Clock
from infra.settings import Settings, resolve_id_hash_key
from storage.blobs import BlobStoreError, SignedPut

BLOB_PATH = "/blobs/"
# Keys the server makes: a kind, a 64-hex book_ref, a random id. Anything else is refused
# before it can name a file (no `..`, no absolute path).
KEY = re.compile(r"(photos|snapshots)/[0-9a-f]{64}/[A-Za-z0-9_-]{1,128}")
_DOMAIN = b"homepocket/local-blob-url/v1"
_CHUNK = 64 * 1024


class UrlRefused(Exception):
    """A blob URL that is malformed, tampered with or expired; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What a verified URL allows: one method on one key, with the signed length (PUT)."""

    method: str
    key: str
    length: int | None


class LocalBlobStore:
    name = "local"

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.root = settings.data_dir / "blobs"
        self.base_url = settings.effective_public_url.rstrip("/")
        self.clock = clock
        self._key = b""

    async def start(self) -> None:
        master = str(resolve_id_hash_key(self.settings)).encode()
        self._key = hmac.new(master, _DOMAIN, hashlib.sha256).digest()
        await anyio.Path(self.root).mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    # --- signing ------------------------------------------------------------------------

    def _signature(self, method: str, key: str, expires: int, length: int | None) -> str:
        message = f"{method}\n{key}\n{expires}\n{'' if length is None else length}"
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def _url(self, method: str, key: str, expires_s: int, length: int | None) -> str:
        if not self._key:
            raise BlobStoreError("not started")
        expires = int(self.clock.now()) + expires_s
        query: dict[str, str | int] = {"expires": expires}
        if length is not None:
            query["length"] = length
        query["signature"] = self._signature(method, key, expires, length)
        return f"{self.base_url}{BLOB_PATH}{quote(key)}?{urlencode(query)}"

    def verify(self, method: str, key: str, query: dict[str, str]) -> Grant:
        """Check a URL the app is serving: signature first, then expiry."""
        if not KEY.fullmatch(key):
            raise UrlRefused("signature")
        expires_raw, length_raw = query.get("expires", ""), query.get("length")
        if not expires_raw.isdigit() or len(expires_raw) > 12:
            raise UrlRefused("signature")
        if method == "PUT" and (length_raw is None or not length_raw.isdigit()):
            raise UrlRefused("signature")
        if method == "GET" and length_raw is not None:
            raise UrlRefused("signature")
        length = int(length_raw) if length_raw is not None else None
        if len(length_raw or "") > 15:
            raise UrlRefused("signature")
        expected = self._signature(method, key, int(expires_raw), length)
        if not hmac.compare_digest(expected, query.get("signature", "")):
            raise UrlRefused("signature")
        if int(self.clock.now()) > int(expires_raw):
            raise UrlRefused("expired")
        return Grant(method, key, length)

    # --- the BlobStore interface --------------------------------------------------------

    async def presign_put(self, key: str, size_bytes: int, expires_s: int) -> SignedPut:
        return SignedPut(
            self._url("PUT", key, expires_s, size_bytes), {"Content-Length": str(size_bytes)}
        )

    async def presign_get(self, key: str, expires_s: int) -> str:
        return self._url("GET", key, expires_s, None)

    def path_of(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise BlobStoreError("bad key")
        return self.root / key

    async def head(self, key: str) -> int | None:
        try:
            return (await anyio.Path(self.path_of(key)).stat()).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobStoreError(type(exc).__name__) from exc

    async def mark_complete(self, key: str) -> None:
        return None  # the server's sweeper is the only lifecycle here

    async def delete(self, key: str) -> None:
        path = anyio.Path(self.path_of(key))
        try:
            await path.unlink(missing_ok=True)
        except OSError as exc:
            raise BlobStoreError(type(exc).__name__) from exc
        # An empty book folder would still tell that a book_ref once had photos.
        with contextlib.suppress(OSError):
            await path.parent.rmdir()

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self.delete(key)

    async def list_keys(self, prefix: str) -> list[str]:
        folder = anyio.Path(self.root / prefix.rstrip("/"))
        if not prefix.endswith("/") or not await folder.is_dir():
            return []
        keys = []
        async for entry in folder.iterdir():
            candidate = prefix + entry.name
            if KEY.fullmatch(candidate):  # temporary `.part` files are not objects
                keys.append(candidate)
        return keys

    async def ping(self) -> None:
        if not await anyio.Path(self.root).is_dir():
            raise BlobStoreError("blob folder missing")

    # --- what the blob routes do with a verified grant ---------------------------------

    async def receive(self, key: str, length: int, chunks: AsyncIterator[bytes]) -> None:
        """Stream an upload to disk; it becomes the object only when exactly `length` bytes
        arrived. Raises TooMuch or TooLittle (the partial file is removed)."""
        final = self.path_of(key)
        await anyio.Path(final.parent).mkdir(parents=True, exist_ok=True)
        partial = final.parent / f".{final.name}.{secrets.token_hex(6)}.part"
        received = 0
        try:
            async with await anyio.open_file(partial, "wb") as out:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > length:
                        raise TooMuch()
                    await out.write(chunk)
            if received != length:
                raise TooLittle()
            await anyio.Path(partial).replace(final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await anyio.Path(partial).unlink()

    async def file_for_download(self, key: str) -> Path | None:
        path = self.path_of(key)
        return path if await anyio.Path(path).is_file() else None


class TooMuch(Exception):
    """More bytes than the signed length."""


class TooLittle(Exception):
    """The body ended before the signed length."""
