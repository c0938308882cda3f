"""The S3 blob store (production): presigned PUT/GET URLs, HEAD, delete, through aioboto3.

Works with AWS and any S3-compatible endpoint (S3_ENDPOINT_URL). Uploads are tagged
`upload=pending` through a signed header until `complete`, so a bucket lifecycle rule
can expire abandoned uploads even if the server's own sweeper never runs.
Never reads an object's body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from infra.settings import ConfigError
from storage.blobs import BlobStoreError, SignedPut

PENDING_TAG = "upload=pending"
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_TAGGING = {"NotImplemented", "MethodNotAllowed", "XNotImplemented"}
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


class S3BlobStore:
    name = "s3"

    def __init__(
        self, bucket: str, endpoint_url: str | None, region: str | None, timeout_s: float = 5.0
    ) -> None:
        self.bucket = bucket
        # BACKEND_TIMEOUT_S: each call, botocore's own retries included, ends within it.
        self.timeout_s = timeout_s
        self.endpoint_url = endpoint_url
        self.region = region
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        import aioboto3  # production dependency, lazily
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",  # SigV4 signs Content-Length; SigV2 would not
            connect_timeout=self.timeout_s,
            read_timeout=self.timeout_s,
            # Retries help with a quick 5xx; the whole call is still bounded (_errors).
            retries={"max_attempts": 3, "mode": "standard"},
            # Custom endpoints (moto, MinIO) rarely resolve virtual-host bucket names.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
        )
        session = aioboto3.Session()
        self._client = await self._stack.enter_async_context(
            session.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )
        )
        try:
            await self.ping()
        except BlobStoreError as exc:
            await self.close()
            raise ConfigError("S3_BUCKET", f"bucket not reachable ({exc})") from None

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    def _s3(self) -> Any:
        if self._client is None:
            raise BlobStoreError("not started")
        return self._client

    async def presign_put(self, key: str, size_bytes: int, expires_s: int) -> SignedPut:
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentLength": size_bytes,
            "Tagging": PENDING_TAG,
        }
        async with _errors(self.timeout_s):
            url = await self._s3().generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires_s
            )
        headers = {"Content-Length": str(size_bytes), "x-amz-tagging": PENDING_TAG}
        return SignedPut(str(url), headers)

    async def presign_get(self, key: str, expires_s: int) -> str:
        async with _errors(self.timeout_s):
            url = await self._s3().generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        return str(url)

    async def head(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            async with _errors(self.timeout_s):
                answer = await self._s3().head_object(Bucket=self.bucket, Key=key)
        except BlobStoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _code(cause) in _MISSING:
                return None
            raise
        return int(answer["ContentLength"])

    async def mark_complete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            async with _errors(self.timeout_s):
                await self._s3().delete_object_tagging(Bucket=self.bucket, Key=key)
        except BlobStoreError as exc:
            # Some S3-compatible services have no object tags: then only the sweeper
            # removes abandoned uploads, and keeping the photo must not fail.
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and _code(cause) in _NO_TAGGING):
                raise

    async def delete(self, key: str) -> None:
        async with _errors(self.timeout_s):
            await self._s3().delete_object(Bucket=self.bucket, Key=key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + _DELETE_BATCH]]
            async with _errors(self.timeout_s):
                answer = await self._s3().delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if answer.get("Errors"):
                raise BlobStoreError(f"{len(answer['Errors'])} objects not deleted")

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        async with _errors(self.timeout_s):
            paginator = self._s3().get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys

    async def ping(self) -> None:
        async with _errors(self.timeout_s):
            await self._s3().head_bucket(Bucket=self.bucket)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.asynccontextmanager
async def _errors(timeout_s: float) -> Any:
    """Every botocore failure becomes BlobStoreError naming only the error code; so
    does a call (with its retries) that took longer than `timeout_s`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise BlobStoreError("Timeout") from exc
    except ClientError as exc:
        raise BlobStoreError(_code(exc) or "ClientError") from exc
    except BotoCoreError as exc:
        raise BlobStoreError(type(exc).__name__) from exc
