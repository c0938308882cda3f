"""What happens to objects over time: erasure, the sweeper, refused deletes, S3 down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from infra.clock import ManualClock
from storage.app import Runtime
from storage.blobs import BlobStore, BlobStoreError
from tests.conftest import make_settings, reset_production
from tests.storage.support import code, complete, member, put, reserve, storage_server, stored_photo
from tests.support.services import moto_s3

DAY = 24 * 3600


async def objects(rt: Runtime, book_ref: str) -> list[str]:
    return sorted(await rt.store.list_keys(f"photos/{book_ref}/"))


async def test_erasing_the_book_removes_objects_and_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = make_settings(backend, tmp_path, request)
    if backend == "production":
        await reset_production(s)
    clock = ManualClock(time.time())
    async with storage_server(s, clock=clock) as (srv, client, rt):
        device, neighbour = await member(client), await member(client)
        book_ref = srv.infra.hasher.book_ref(device.book_id)
        kept = await stored_photo(client, neighbour, b"the neighbour's photo")
        first = await stored_photo(client, device, os.urandom(1000))
        await stored_photo(client, device, os.urandom(2000))
        pending = (await reserve(client, device, 3)).json()["data"]
        assert (await put(client, pending, b"abc")).status_code == 200
        late = (await reserve(client, device, 4)).json()["data"]  # URL used after erasure
        url = (await client.get(f"/api/v1/photos/{first}", headers=device.auth())).json()["data"][
            "download_url"
        ]
        assert len(await objects(rt, book_ref)) == 3

        erased = await client.delete(f"/api/v1/books/{device.book_id}", headers=device.auth())
        assert erased.status_code == 204
        assert await objects(rt, book_ref) == []
        assert (await client.get(url)).status_code in (403, 404)
        rows = await srv.infra.db.fetch("SELECT photo_id FROM photos WHERE book_ref = $1", book_ref)
        assert rows == []

        # A PUT through a URL issued before the erasure lands; the second pass removes it
        # once every such URL has expired.
        assert (await put(client, late, b"late")).status_code == 200
        assert len(await objects(rt, book_ref)) == 1
        clock.advance(300 + 61)
        await rt.uploads().sweep()
        assert await objects(rt, book_ref) == []
        assert await srv.infra.db.fetch("SELECT id FROM blob_deletions") == []
        # The neighbour's book is untouched.
        other = await client.get(f"/api/v1/photos/{kept}", headers=neighbour.auth())
        assert other.status_code == 200
        assert (await client.get(other.json()["data"]["download_url"])).status_code == 200


async def test_sweeper_loop_removes_abandoned_uploads(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = make_settings(backend, tmp_path, request)
    if backend == "production":
        await reset_production(s)
    clock = ManualClock(time.time())
    async with storage_server(s, clock=clock, sweep_every_s=0.05) as (srv, client, rt):
        device = await member(client)
        book_ref = srv.infra.hasher.book_ref(device.book_id)
        done = await stored_photo(client, device, b"kept")
        abandoned = (await reserve(client, device, 5)).json()["data"]
        assert (await put(client, abandoned, b"never")).status_code == 200
        fresh = (await reserve(client, device, 5)).json()["data"]
        clock.advance(DAY - 10)
        fresh_later = (await reserve(client, device, 5, at=clock.now())).json()["data"]
        clock.advance(11)  # the first two uploads are now over 24 h old
        # One sweep drops the rows, then deletes the objects: wait for both.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = await srv.infra.db.fetch("SELECT photo_id FROM photos ORDER BY photo_id")
            if len(rows) == 2 and len(await objects(rt, book_ref)) == 1:
                break
            await asyncio.sleep(0.05)
        left = {r["photo_id"] for r in rows}
        assert left == {done, fresh_later["photo_id"]}
        assert fresh["photo_id"] not in left
        assert await objects(rt, book_ref) == [f"photos/{book_ref}/{done}"]
        token = device.auth(iat=clock.now(), exp=clock.now() + 600)
        path = f"/api/v1/photos/{abandoned['photo_id']}/complete"
        gone = await client.post(path, headers=token)
        assert code(gone) == "PHOTO_NOT_FOUND"


class RefusingDeletes:
    """The real store, except that it refuses the next `refusals` deletions."""

    def __init__(self, real: BlobStore, refusals: int) -> None:
        self.real = real
        self.refusals = refusals

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def _refuse(self) -> None:
        if self.refusals > 0:
            self.refusals -= 1
            raise BlobStoreError("ServiceUnavailable")

    async def delete(self, key: str) -> None:
        self._refuse()
        await self.real.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self._refuse()
        await self.real.delete_many(keys)


async def test_refused_deletes_are_retried_by_the_sweeper(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = make_settings(backend, tmp_path, request)
    if backend == "production":
        await reset_production(s)
    clock = ManualClock(time.time())
    async with storage_server(s, clock=clock) as (srv, client, rt):
        device = await member(client)
        book_ref = srv.infra.hasher.book_ref(device.book_id)
        photo_id = await stored_photo(client, device, b"a photo")
        flaky = RefusingDeletes(rt.store, refusals=2)
        rt.uploads().store = flaky  # type: ignore[assignment]

        # Deleting one photo: the store refuses, the client is told, nothing changed.
        refused = await client.delete(f"/api/v1/photos/{photo_id}", headers=device.auth())
        assert refused.status_code == 503 and code(refused) == "S3_ERROR"
        assert (
            await client.get(f"/api/v1/photos/{photo_id}", headers=device.auth())
        ).status_code == 200

        # Erasing the book: rows go at once, the refused delete waits for the sweeper.
        erased = await client.delete(f"/api/v1/books/{device.book_id}", headers=device.auth())
        assert erased.status_code == 204
        assert await srv.infra.db.fetch("SELECT photo_id FROM photos") == []
        assert await objects(rt, book_ref) == [f"photos/{book_ref}/{photo_id}"]
        pending = await srv.infra.db.fetch(
            "SELECT target, attempts FROM blob_deletions ORDER BY id"
        )
        # The photos folder: refused now, and its second pass; the (empty) snapshots
        # folder was emptied at once, its second pass waits.
        assert [(p["target"].split("/")[0], p["attempts"]) for p in pending] == [
            ("photos", 1),
            ("photos", 0),
            ("snapshots", 0),
        ]
        await rt.uploads().sweep()  # not due yet: backing off
        assert len(await objects(rt, book_ref)) == 1
        clock.advance(31)
        await rt.uploads().sweep()
        assert await objects(rt, book_ref) == []
        assert len(await srv.infra.db.fetch("SELECT id FROM blob_deletions")) == 2  # 2nd passes
        clock.advance(400)
        await rt.uploads().sweep()
        assert await srv.infra.db.fetch("SELECT id FROM blob_deletions") == []


async def test_s3_down_is_s3_error_with_nothing_half_recorded(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import boto3

    with contextlib.ExitStack() as s3_server:  # a private S3 server this test stops
        endpoint = s3_server.enter_context(moto_s3())
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="homepocket-down")
        s3.close()
        s = make_settings(
            "production", tmp_path, request, s3_endpoint_url=endpoint, s3_bucket="homepocket-down"
        )
        await reset_production(s)
        async with storage_server(s) as (srv, client, _rt):
            device = await member(client)
            photo_id = await stored_photo(client, device, b"before the outage")
            pending = (await reserve(client, device, 3)).json()["data"]
            assert (await put(client, pending, b"abc")).status_code == 200
            assert (await client.get("/ready")).status_code == 200

            s3_server.close()  # the S3 server goes away
            done = await complete(client, device, pending["photo_id"])
            assert done.status_code == 503 and code(done) == "S3_ERROR"
            deleted = await client.delete(f"/api/v1/photos/{photo_id}", headers=device.auth())
            assert deleted.status_code == 503 and code(deleted) == "S3_ERROR"
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["error"]["details"] == {"backend": "s3"}

            rows = await srv.infra.db.fetch("SELECT photo_id, status FROM photos")
            assert {(r["photo_id"], r["status"]) for r in rows} == {
                (photo_id, "complete"),
                (pending["photo_id"], "pending"),
            }


async def test_s3_uploads_are_tagged_pending_until_complete(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The tag a bucket lifecycle rule expires abandoned uploads by (README)."""
    import boto3

    s = make_settings("production", tmp_path, request)
    await reset_production(s)
    async with storage_server(s) as (_srv, client, _rt):
        device = await member(client)
        upload = (await reserve(client, device, 3)).json()["data"]
        assert upload["upload_headers"] == {
            "Content-Length": "3",
            "x-amz-tagging": "upload=pending",
        }
        assert (await put(client, upload, b"abc")).status_code == 200
        s3 = boto3.client("s3", endpoint_url=s.s3_endpoint_url, region_name="us-east-1")
        try:
            tags = s3.get_object_tagging(Bucket=s.s3_bucket, Key=upload["s3_key"])["TagSet"]
            assert tags == [{"Key": "upload", "Value": "pending"}]
            assert (await complete(client, device, upload["photo_id"])).status_code == 200
            tags = s3.get_object_tagging(Bucket=s.s3_bucket, Key=upload["s3_key"])["TagSet"]
            assert tags == []
        finally:
            s3.close()


async def test_a_deleted_photo_stays_deleted_after_a_late_put(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = make_settings(backend, tmp_path, request)
    if backend == "production":
        await reset_production(s)
    clock = ManualClock(time.time())
    async with storage_server(s, clock=clock) as (srv, client, rt):
        device = await member(client)
        book_ref = srv.infra.hasher.book_ref(device.book_id)
        upload = (await reserve(client, device, 4)).json()["data"]
        assert (await put(client, upload, b"abcd")).status_code == 200
        assert (await complete(client, device, upload["photo_id"])).status_code == 200
        path = f"/api/v1/photos/{upload['photo_id']}"
        assert (await client.delete(path, headers=device.auth())).status_code == 204
        assert await objects(rt, book_ref) == []
        # The upload URL is still valid for a while: a late PUT lands, then goes.
        assert (await put(client, upload, b"abcd")).status_code == 200
        assert len(await objects(rt, book_ref)) == 1
        clock.advance(300 + 61)
        await rt.uploads().sweep()
        assert await objects(rt, book_ref) == []
        assert await srv.infra.db.fetch("SELECT id FROM blob_deletions") == []
        if not s.s3_bucket:  # no empty folder left to say a book_ref had photos
            assert not (s.data_dir / "blobs" / "photos" / book_ref).exists()
