"""Photo storage (docs/CONTRACT.md §3) over real HTTP, on the local folder and on moto's S3 server:
the same tests through the `backend` fixture."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from limits import parse

from infra.clock import ManualClock
from infra.settings import Settings
from tests.conftest import fresh_settings
from tests.storage.support import (
    code,
    complete,
    member,
    put,
    reserve,
    storage_server,
    stored_photo,
)
from tests.support.keys import DeviceKey
from tests.support.services import InProcessServer


async def test_upload_complete_download_delete(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    device = await member(client)
    data = os.urandom(200_000)  # larger than one streaming chunk
    reserved = await reserve(
        client, device, len(data), transaction_id="txn-7f3a9", mime_type="image/jpeg"
    )
    assert reserved.status_code == 201, reserved.text
    upload = reserved.json()["data"]
    book_ref = server.infra.hasher.book_ref(device.book_id)
    photo_id = upload["photo_id"]
    assert upload["s3_key"] == f"photos/{book_ref}/{photo_id}"
    assert upload["upload_method"] == "PUT"
    assert upload["expires_in"] == 300
    assert upload["upload_headers"]["Content-Length"] == str(len(data))
    assert device.book_id not in upload["upload_url"]

    assert code(await complete(client, device, photo_id)) == "UPLOAD_INCOMPLETE"
    assert (await put(client, upload, data)).status_code == 200
    done = await complete(client, device, photo_id)
    assert done.status_code == 200
    assert done.json()["data"] == {"photo_id": photo_id, "size_bytes": len(data)}
    again = await complete(client, device, photo_id)
    assert again.status_code == 200 and again.json()["data"] == done.json()["data"]

    got = await client.get(f"/api/v1/photos/{photo_id}", headers=device.auth())
    assert got.status_code == 200
    info = got.json()["data"]
    assert info["photo_id"] == photo_id and info["size_bytes"] == len(data)
    assert info["expires_in"] == 300 and info["created_at"].endswith("Z")
    assert device.book_id not in info["download_url"]
    blob = await client.get(info["download_url"])
    assert blob.status_code == 200 and blob.content == data

    # What the server kept: hashed ids, sizes and times; no app data.
    rows = await server.infra.db.fetch("SELECT * FROM photos")
    audit = await server.infra.db.fetch("SELECT * FROM audit_events")
    kept = repr(rows) + repr(audit)
    for secret in (device.book_id, "txn-7f3a9", "image/jpeg"):
        assert secret not in kept
    assert set(rows[0]) == {
        "photo_id",
        "book_ref",
        "size_bytes",
        "status",
        "created_at",
        "completed_at",
    }
    assert ("photo", "upload") in {(a["event_type"], a["action"]) for a in audit}

    deleted = await client.delete(f"/api/v1/photos/{photo_id}", headers=device.auth())
    assert deleted.status_code == 204
    assert code(await client.get(f"/api/v1/photos/{photo_id}", headers=device.auth())) == (
        "PHOTO_NOT_FOUND"
    )
    assert (await client.get(info["download_url"])).status_code == 404  # the object is gone
    audit = await server.infra.db.fetch(
        "SELECT action FROM audit_events WHERE event_type = 'photo'"
    )
    assert sorted(a["action"] for a in audit) == ["delete", "upload"]


async def test_upload_larger_than_declared_is_refused(client: httpx.AsyncClient) -> None:
    device = await member(client)
    upload = (await reserve(client, device, 1000)).json()["data"]
    headers = {**upload["upload_headers"], "Content-Length": "1500"}
    sent = await client.put(upload["upload_url"], content=os.urandom(1500), headers=headers)
    finished = await complete(client, device, upload["photo_id"])
    if sent.status_code >= 400:  # refused at the store: nothing was kept
        assert sent.status_code in (400, 403, 413)
        assert code(finished) == "UPLOAD_INCOMPLETE"
    else:  # a store that took it: complete finds the size wrong and deletes the object
        assert finished.status_code == 400 and code(finished) == "VALIDATION_ERROR"
        assert finished.json()["error"]["details"] == {"field": "size_bytes"}
        assert code(await complete(client, device, upload["photo_id"])) == "UPLOAD_INCOMPLETE"
    got = await client.get(f"/api/v1/photos/{upload['photo_id']}", headers=device.auth())
    assert code(got) == "PHOTO_NOT_FOUND"


async def test_smaller_than_declared_is_refused(client: httpx.AsyncClient) -> None:
    device = await member(client)
    upload = (await reserve(client, device, 1000)).json()["data"]
    headers = {**upload["upload_headers"], "Content-Length": "600"}
    sent = await client.put(upload["upload_url"], content=os.urandom(600), headers=headers)
    finished = await complete(client, device, upload["photo_id"])
    if sent.status_code >= 400:
        assert code(finished) == "UPLOAD_INCOMPLETE"
    else:
        assert code(finished) == "VALIDATION_ERROR"


async def test_size_limits_and_fields(client: httpx.AsyncClient, settings: Settings) -> None:
    device = await member(client)
    too_big = await reserve(client, device, settings.photo_max_bytes + 1)
    assert too_big.status_code == 400 and code(too_big) == "PHOTO_TOO_LARGE"
    assert (await reserve(client, device, settings.photo_max_bytes)).status_code == 201
    for bad in (0, -1, "12", 1.5, None, True):
        response = await reserve(client, device, bad)  # type: ignore[arg-type]
        assert code(response) == "VALIDATION_ERROR", bad
        assert response.json()["error"]["details"] == {"field": "size_bytes"}
    nul = await reserve(client, device, 10, mime_type="image/\x00jpeg")
    assert code(nul) == "VALIDATION_ERROR"
    no_book = await client.post(
        "/api/v1/photos/upload", json={"size_bytes": 10}, headers=device.auth()
    )
    assert code(no_book) == "VALIDATION_ERROR"
    garbled = await client.post(
        "/api/v1/photos/upload", content=b"{not json", headers=device.auth()
    )
    assert code(garbled) == "VALIDATION_ERROR"
    huge = await client.post(
        "/api/v1/photos/upload", content=b" " * (200 * 1024), headers=device.auth()
    )
    assert huge.status_code == 413 and code(huge) == "PAYLOAD_TOO_LARGE"


async def test_auth_and_other_books_get_no_oracle(client: httpx.AsyncClient) -> None:
    alice, mallory = await member(client), await member(client)
    photo_id = await stored_photo(client, alice, b"alice's receipt")
    for method, path in (
        ("GET", f"/api/v1/photos/{photo_id}"),
        ("POST", f"/api/v1/photos/{photo_id}/complete"),
        ("DELETE", f"/api/v1/photos/{photo_id}"),
    ):
        # Another book's photo is exactly as absent as an id nobody made.
        theirs = await client.request(method, path, headers=mallory.auth())
        made_up = await client.request(
            method, path.replace(photo_id, "0" * 32), headers=mallory.auth()
        )
        malformed = await client.request(
            method, path.replace(photo_id, "..secret"), headers=mallory.auth()
        )
        for response in (theirs, made_up, malformed):
            assert response.status_code == 404 and code(response) == "PHOTO_NOT_FOUND"
        assert theirs.json()["error"] == made_up.json()["error"]
        # A token naming alice's book is refused before anything is looked up.
        claimed = await client.request(method, path, headers=mallory.auth(alice.book_id))
        assert claimed.status_code == 403 and code(claimed) == "FORBIDDEN"
        assert (await client.request(method, path)).status_code == 401
    into_alice = await client.post(
        "/api/v1/photos/upload",
        json={"book_id": alice.book_id, "size_bytes": 10},
        headers=mallory.auth(None),
    )
    assert into_alice.status_code == 403 and code(into_alice) == "FORBIDDEN"
    stranger = DeviceKey()
    registered = await client.post(
        "/api/v1/devices", json={"public_key": stranger.public_b64}, headers=stranger.auth(None)
    )
    assert registered.status_code == 201
    garbled = await client.post("/api/v1/photos/upload", content=b"{", headers=stranger.auth(None))
    assert garbled.status_code == 403  # 403 ranks above the malformed body
    # A token with a null book_id is fine for the caller's own book.
    own = await client.get(f"/api/v1/photos/{photo_id}", headers=alice.auth(None))
    assert own.status_code == 200


async def test_pending_photo_is_not_found_until_complete(client: httpx.AsyncClient) -> None:
    device = await member(client)
    upload = (await reserve(client, device, 5)).json()["data"]
    assert (await put(client, upload, b"12345")).status_code == 200
    got = await client.get(f"/api/v1/photos/{upload['photo_id']}", headers=device.auth())
    assert code(got) == "PHOTO_NOT_FOUND"
    # A pending upload may be withdrawn: its object and reservation go.
    gone = await client.delete(f"/api/v1/photos/{upload['photo_id']}", headers=device.auth())
    assert gone.status_code == 204
    assert code(await complete(client, device, upload["photo_id"])) == "PHOTO_NOT_FOUND"


async def test_quota_counts_completed_and_pending(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await fresh_settings(
        backend, tmp_path, request, photo_max_bytes=2000, book_quota_bytes=3000
    )
    async with storage_server(s) as (_, client, _rt):
        device, other = await member(client), await member(client)
        done = await stored_photo(client, device, os.urandom(1500))  # completed
        assert (await reserve(client, device, 1000)).status_code == 201  # pending
        over = await reserve(client, device, 501)
        assert over.status_code == 413 and code(over) == "QUOTA_EXCEEDED"
        assert over.json()["error"]["details"] == {"quota_bytes": 3000, "used_bytes": 2500}
        assert (await reserve(client, other, 2000)).status_code == 201  # per book
        assert (await reserve(client, device, 500)).status_code == 201  # exactly full
        assert code(await reserve(client, device, 1)) == "QUOTA_EXCEEDED"
        deleted = await client.delete(f"/api/v1/photos/{done}", headers=device.auth())
        assert deleted.status_code == 204
        assert (await reserve(client, device, 1500)).status_code == 201
        # Racing reservations cannot overshoot the quota together.
        racer = await member(client)
        answers = await asyncio.gather(*(reserve(client, racer, 400) for _ in range(10)))
        assert sorted(a.status_code for a in answers) == [201] * 7 + [413] * 3


async def test_rate_limits_per_device(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base = Settings.from_env(environ={}, env_file=None).rate_limits
    limits = {
        **base,
        "RATE_LIMIT_PHOTO_UPLOAD": parse("2/day"),
        "RATE_LIMIT_PHOTO_GET": parse("2/day"),
    }
    s = await fresh_settings(backend, tmp_path, request, rate_limits=limits)
    async with storage_server(s) as (_, client, _rt):
        device, other = await member(client), await member(client)
        photo_id = await stored_photo(client, device, b"x" * 10)  # upload 1 of 2
        assert (await reserve(client, device, 10**9)).status_code == 400  # refused, counted
        limited = await reserve(client, device, 10)
        assert limited.status_code == 429 and code(limited) == "RATE_LIMIT_EXCEEDED"
        details = limited.json()["error"]["details"]
        assert details["limit"] == 2 and details["window"] == 86400 and details["retry_after"] > 0
        assert limited.headers["X-RateLimit-Limit"] == "2"
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert int(limited.headers["Retry-After"]) > 0
        assert (await reserve(client, other, 10)).status_code == 201  # another device
        path = f"/api/v1/photos/{photo_id}"
        assert (await client.get(path, headers=device.auth())).status_code == 200
        assert (await client.get(path, headers=device.auth())).status_code == 200
        third = await client.get(path, headers=device.auth())
        assert third.status_code == 429 and code(third) == "RATE_LIMIT_EXCEEDED"
        # 429 ranks above 403 and 404: a limited device learns nothing more.
        elsewhere = await client.get("/api/v1/photos/" + "0" * 32, headers=device.auth())
        assert elsewhere.status_code == 429


async def test_urls_expire_after_300_seconds(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await fresh_settings(backend, tmp_path, request)
    clock = ManualClock(time.time())
    async with storage_server(s, clock=clock) as (_, client, _rt):
        device = await member(client)
        photo_id = await stored_photo(client, device, b"first")
        upload = (await reserve(client, device, 6)).json()["data"]
        url = (await client.get(f"/api/v1/photos/{photo_id}", headers=device.auth())).json()[
            "data"
        ]["download_url"]
        if s.s3_bucket:
            # S3 enforces X-Amz-Expires itself (moto's server does not check it): the
            # URLs must carry 300 s and sign Content-Length.
            put_query = parse_qs(urlsplit(upload["upload_url"]).query)
            assert put_query["X-Amz-Expires"] == ["300"]
            assert "content-length" in put_query["X-Amz-SignedHeaders"][0].split(";")
            assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["300"]
            return
        clock.advance(299)
        assert (await client.get(url)).status_code == 200
        clock.advance(2)
        for response in (await client.get(url), await put(client, upload, b"second")):
            assert response.status_code == 403 and code(response) == "FORBIDDEN"
            assert response.json()["error"]["details"] == {"reason": "expired"}
        assert code(await complete(client, device, upload["photo_id"])) == "UPLOAD_INCOMPLETE"


async def test_ready_and_openapi(client: httpx.AsyncClient, settings: Settings) -> None:
    ready = (await client.get("/ready")).json()["data"]
    assert ("s3" in ready["backends"]) == bool(settings.s3_bucket)
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/api/v1/photos/{photo_id}"]) == {"get", "delete"}
    upload = paths["/api/v1/photos/upload"]["post"]
    assert upload["responses"]["201"]["content"]["application/json"]["schema"]["properties"][
        "data"
    ]["required"] == [
        "photo_id",
        "s3_key",
        "upload_url",
        "upload_method",
        "upload_headers",
        "expires_in",
    ]
    assert "QUOTA_EXCEEDED" in upload["responses"]["413"]["description"]
    assert "UPLOAD_INCOMPLETE" in str(paths["/api/v1/photos/{photo_id}/complete"])
