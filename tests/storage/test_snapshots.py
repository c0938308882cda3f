"""Encrypted snapshots over real HTTP, on the local folder with the in-process broker and
on moto's S3 with Redis and PostgreSQL: the same tests through the `backend` fixture."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path

import httpx
import pytest

from infra.clock import ManualClock
from infra.settings import Settings
from storage.app import Runtime
from tests.storage.support import (
    Booked,
    book_with_ops,
    code,
    complete_snapshot,
    latest_snapshot,
    member,
    ops_page,
    put,
    reserve,
    reserve_snapshot,
    send_ops,
    snapshots_path,
    stored_photo,
    stored_snapshot,
)
from tests.support.services import InProcessServer

DAY = 24 * 3600


Opener = Callable[..., AbstractAsyncContextManager[Booked]]


@pytest.fixture
def booked(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Opener:
    """`booked(ops, clock=None, **settings)`: see `book_with_ops`."""
    return partial(book_with_ops, backend, tmp_path, request)


async def objects(rt: Runtime, book_ref: str) -> list[str]:
    return sorted(await rt.store.list_keys(f"snapshots/{book_ref}/"))


async def rows(srv: InProcessServer, book_ref: str) -> dict[str, int]:
    """snapshot_id -> covers_seq of the book's completed snapshots."""
    found = await srv.infra.db.fetch(
        "SELECT snapshot_id, covers_seq FROM snapshots WHERE book_ref = $1 AND status = $2",
        book_ref,
        "complete",
    )
    return {r["snapshot_id"]: r["covers_seq"] for r in found}


async def test_snapshot_round_trip_trims_what_it_covers(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    device = await member(client)
    book_ref = server.infra.hasher.book_ref(device.book_id)
    assert await send_ops(client, device, 5) == 5
    epoch = (await ops_page(client, device))["epoch"]
    none = await latest_snapshot(client, device)
    assert none.status_code == 404 and code(none) == "SNAPSHOT_NOT_FOUND"

    data = os.urandom(100_000)
    reserved = await reserve_snapshot(client, device, epoch, 3, len(data))
    assert reserved.status_code == 201, reserved.text
    upload = reserved.json()["data"]
    assert set(upload) == {
        "snapshot_id",
        "upload_url",
        "upload_method",
        "upload_headers",
        "expires_in",
    }
    snapshot_id = upload["snapshot_id"]
    assert upload["upload_method"] == "PUT" and upload["expires_in"] == 300
    assert upload["upload_headers"]["Content-Length"] == str(len(data))
    assert f"snapshots/{book_ref}/{snapshot_id}" in upload["upload_url"]
    assert device.book_id not in upload["upload_url"]

    early = await complete_snapshot(client, device, snapshot_id)
    assert early.status_code == 409 and code(early) == "UPLOAD_INCOMPLETE"
    assert (await ops_page(client, device))["oldest_seq"] == 1  # nothing trimmed yet
    assert (await put(client, upload, data)).status_code == 200
    done = await complete_snapshot(client, device, snapshot_id)
    assert done.status_code == 200, done.text
    described = {"snapshot_id": snapshot_id, "epoch": epoch, "covers_seq": 3}
    assert done.json()["data"] == {**described, "size_bytes": len(data)}
    again = await complete_snapshot(client, device, snapshot_id)
    assert again.status_code == 200 and again.json()["data"] == done.json()["data"]

    latest = await latest_snapshot(client, device)
    assert latest.status_code == 200
    info = latest.json()["data"]
    assert {k: info[k] for k in ("snapshot_id", "epoch", "covers_seq", "size_bytes")} == {
        **described,
        "size_bytes": len(data),
    }
    assert info["created_at"].endswith("Z") and device.book_id not in info["download_url"]
    blob = await client.get(info["download_url"])
    assert blob.status_code == 200 and blob.content == data

    # The ops it covers are gone from the backlog; a device behind it gets the snapshot.
    page = await ops_page(client, device)
    assert page["oldest_seq"] == 4 and page["latest_seq"] == 5
    assert page["gap"] == {"resume_seq": 3, "snapshot": described}
    assert [o["seq"] for o in page["ops"]] == [4, 5]
    behind = await ops_page(client, device, since=1, epoch=epoch)
    assert behind["gap"] == {"resume_seq": 3, "snapshot": described}
    current = await ops_page(client, device, since=3, epoch=epoch)
    assert current["gap"] is None and [o["seq"] for o in current["ops"]] == [4, 5]
    status = await client.get(f"/api/v1/books/{device.book_id}/sync_status", headers=device.auth())
    sync = status.json()["data"]
    assert sync["snapshot"] == {
        "snapshot_id": snapshot_id,
        "covers_seq": 3,
        "size_bytes": len(data),
    }
    assert sync["backlog"]["oldest_seq"] == 4 and sync["backlog"]["retained_ops"] == 2

    # What the server kept: hashed ids, positions, sizes and times; never the bytes.
    kept = await server.infra.db.fetch("SELECT * FROM snapshots")
    assert set(kept[0]) == {
        "snapshot_id",
        "book_ref",
        "epoch",
        "covers_seq",
        "size_bytes",
        "status",
        "created_at",
        "completed_at",
    }
    assert device.book_id not in repr(kept) and kept[0]["book_ref"] == book_ref


async def test_refusals_in_the_contract_order(
    client: httpx.AsyncClient, server: InProcessServer, settings: Settings
) -> None:
    device = await member(client)
    await send_ops(client, device, 2)
    epoch = (await ops_page(client, device))["epoch"]
    limit = settings.snapshot_max_bytes

    def field(response: httpx.Response) -> object:
        assert response.status_code == 400 and code(response) == "VALIDATION_ERROR"
        return response.json()["error"]["details"]["field"]

    assert field(await reserve_snapshot(client, device, "not-the-epoch", 1, 10)) == "epoch"
    assert field(await reserve_snapshot(client, device, epoch, 3, 10)) == "covers_seq"
    for bad in ({"covers_seq": -1}, {"covers_seq": "1"}, {"size_bytes": 0}, {"epoch": 7}):
        body = {"epoch": epoch, "covers_seq": 1, "size_bytes": 10, **bad}
        sent = await client.post(snapshots_path(device), json=body, headers=device.auth())
        assert field(sent) == next(iter(bad))
    nul = await reserve_snapshot(client, device, epoch + "\x00", 1, 10)
    assert field(nul) == "epoch"

    too_big = await reserve_snapshot(client, device, epoch, 1, limit + 1)
    assert too_big.status_code == 413 and code(too_big) == "PAYLOAD_TOO_LARGE"
    assert too_big.json()["error"]["details"] == {"limit": limit}
    # 413 ranks first: over the limit with a wrong epoch, or without a token, is still 413.
    assert code(await reserve_snapshot(client, device, "x", 99, limit + 1)) == "PAYLOAD_TOO_LARGE"
    body = {"epoch": epoch, "covers_seq": 1, "size_bytes": limit + 1}
    anonymous = await client.post(snapshots_path(device), json=body)
    assert anonymous.status_code == 413
    body["size_bytes"] = 10
    assert (await client.post(snapshots_path(device), json=body)).status_code == 401
    assert (await reserve_snapshot(client, device, epoch, 2, limit)).status_code == 201
    assert (await reserve_snapshot(client, device, epoch, 0, 1)).status_code == 201


async def test_other_books_get_no_oracle(client: httpx.AsyncClient) -> None:
    alice, mallory = await member(client), await member(client)
    await send_ops(client, alice, 2)
    epoch = (await ops_page(client, alice))["epoch"]
    snapshot_id = await stored_snapshot(client, alice, epoch, 2, b"alice's ledger")
    theirs_path = f"{snapshots_path(mallory)}/{snapshot_id}/complete"
    # Another book's snapshot, under the caller's own book, is as absent as a made-up id.
    answers = [
        await client.post(path, headers=mallory.auth())
        for path in (
            theirs_path,
            theirs_path.replace(snapshot_id, "0" * 32),
            theirs_path.replace(snapshot_id, "..secret"),
        )
    ]
    for response in answers:
        assert response.status_code == 404 and code(response) == "SNAPSHOT_NOT_FOUND"
    assert answers[0].json()["error"] == answers[1].json()["error"]
    assert code(await latest_snapshot(client, mallory)) == "SNAPSHOT_NOT_FOUND"
    # Naming alice's book: 403 whatever the token claims, as for a book that does not exist.
    alice_base = snapshots_path(alice)
    body = {"epoch": epoch, "covers_seq": 1, "size_bytes": 10}
    for claim in (mallory.book_id, alice.book_id):
        for method, path in (
            ("GET", f"{alice_base}/latest"),
            ("POST", f"{alice_base}/{snapshot_id}/complete"),
            ("POST", alice_base),
        ):
            sent = await client.request(
                method, path, headers=mallory.auth(claim), json=body if method == "POST" else None
            )
            assert sent.status_code == 403 and code(sent) == "FORBIDDEN", (method, path)
    nowhere = await client.get(
        f"/api/v1/books/{'n' * 20}/snapshots/latest", headers=mallory.auth("n" * 20)
    )
    assert nowhere.status_code == 403
    assert (await client.get(f"{alice_base}/latest")).status_code == 401


async def test_wrong_size_object_is_deleted(booked: Opener) -> None:
    async with booked(1) as (_srv, client, rt, device, epoch, book_ref):
        upload = (await reserve_snapshot(client, device, epoch, 1, 1000)).json()["data"]
        key = f"snapshots/{book_ref}/{upload['snapshot_id']}"
        # An object of another size under that key (as a store that ignored the signed
        # length would keep it).
        wrong = await rt.store.presign_put(key, 600, 300)
        stored = await client.put(wrong.url, content=os.urandom(600), headers=wrong.headers)
        assert stored.status_code == 200
        finished = await complete_snapshot(client, device, upload["snapshot_id"])
        assert finished.status_code == 400 and code(finished) == "VALIDATION_ERROR"
        assert finished.json()["error"]["details"] == {"field": "size_bytes"}
        assert await objects(rt, book_ref) == []
        again = await complete_snapshot(client, device, upload["snapshot_id"])
        assert code(again) == "UPLOAD_INCOMPLETE"
        assert (await ops_page(client, device))["oldest_seq"] == 1  # nothing trimmed
        assert code(await latest_snapshot(client, device)) == "SNAPSHOT_NOT_FOUND"


async def test_only_the_two_best_snapshots_are_kept(booked: Opener) -> None:
    async with booked(8) as (srv, client, rt, device, epoch, book_ref):
        made = {c: await stored_snapshot(client, device, epoch, c, os.urandom(50)) for c in (2, 4)}
        assert await rows(srv, book_ref) == {made[2]: 2, made[4]: 4}
        made[6] = await stored_snapshot(client, device, epoch, 6, os.urandom(50))
        assert await rows(srv, book_ref) == {made[4]: 4, made[6]: 6}
        keys = [f"snapshots/{book_ref}/{made[c]}" for c in (4, 6)]
        assert await objects(rt, book_ref) == sorted(keys)
        # One that covers less than both kept ones is taken, then dropped at once.
        late = await stored_snapshot(client, device, epoch, 3, os.urandom(50))
        assert late not in await rows(srv, book_ref)
        assert await objects(rt, book_ref) == sorted(keys)
        assert (await latest_snapshot(client, device)).json()["data"]["snapshot_id"] == made[6]
        assert (await ops_page(client, device))["oldest_seq"] == 7


async def test_concurrent_completions_leave_one_latest(booked: Opener) -> None:
    async with booked(10) as (srv, client, rt, device, epoch, book_ref):
        uploads = {}
        for covers in (3, 9, 5, 7):
            upload = (await reserve_snapshot(client, device, epoch, covers, 64)).json()["data"]
            assert (await put(client, upload, os.urandom(64))).status_code == 200
            uploads[covers] = upload["snapshot_id"]
        answers = await asyncio.gather(
            *(complete_snapshot(client, device, i) for i in uploads.values())
        )
        assert [a.status_code for a in answers] == [200] * 4
        assert await rows(srv, book_ref) == {uploads[9]: 9, uploads[7]: 7}
        assert await objects(rt, book_ref) == sorted(
            f"snapshots/{book_ref}/{uploads[c]}" for c in (7, 9)
        )
        latest = (await latest_snapshot(client, device)).json()["data"]
        assert (latest["snapshot_id"], latest["covers_seq"]) == (uploads[9], 9)
        page = await ops_page(client, device)
        assert page["oldest_seq"] == 10 and [o["seq"] for o in page["ops"]] == [10]
        assert page["gap"]["snapshot"]["snapshot_id"] == uploads[9]


async def test_quota_counts_photos_and_snapshots(booked: Opener) -> None:
    async with booked(1, book_quota_bytes=3000) as (_, client, _rt, device, epoch, _ref):
        await stored_photo(client, device, os.urandom(1000))
        await stored_snapshot(client, device, epoch, 1, os.urandom(800))  # completed
        assert (await reserve_snapshot(client, device, epoch, 1, 700)).status_code == 201
        over = await reserve_snapshot(client, device, epoch, 1, 501)
        assert over.status_code == 413 and code(over) == "QUOTA_EXCEEDED"
        assert over.json()["error"]["details"] == {"quota_bytes": 3000, "used_bytes": 2500}
        assert code(await reserve(client, device, 501)) == "QUOTA_EXCEEDED"  # photos too
        assert (await reserve(client, device, 500)).status_code == 201  # exactly full


async def test_erasure_and_the_sweeper_remove_snapshots(booked: Opener) -> None:
    clock = ManualClock(time.time())
    async with booked(3, clock) as (srv, client, rt, device, epoch, book_ref):
        neighbour = await member(client)
        await send_ops(client, neighbour, 3)
        other_ref = srv.infra.hasher.book_ref(neighbour.book_id)
        other_epoch = (await ops_page(client, neighbour))["epoch"]
        await stored_snapshot(client, neighbour, other_epoch, 3, b"the neighbour's")

        # Abandoned: reserved and PUT, never completed; swept after 24 h, not before.
        abandoned = (await reserve_snapshot(client, device, epoch, 2, 5)).json()["data"]
        assert (await put(client, abandoned, b"never")).status_code == 200
        kept = await stored_snapshot(client, device, epoch, 3, b"kept")
        clock.advance(DAY - 10)
        await rt.uploads().sweep()
        assert len(await objects(rt, book_ref)) == 2
        clock.advance(11)
        assert (await rt.uploads().sweep())[0] == 1
        assert await objects(rt, book_ref) == [f"snapshots/{book_ref}/{kept}"]
        assert set(await rows(srv, book_ref)) == {kept}
        gone = await srv.infra.db.fetch(
            "SELECT snapshot_id FROM snapshots WHERE snapshot_id = $1", abandoned["snapshot_id"]
        )
        assert gone == []

        # Erasure: rows and objects before the 204; a late PUT is swept again later.
        at = clock.now()
        late = (await reserve_snapshot(client, device, epoch, 3, 4, at=at)).json()["data"]
        token = device.auth(iat=at, exp=at + 600)
        erased = await client.delete(f"/api/v1/books/{device.book_id}", headers=token)
        assert erased.status_code == 204
        assert await objects(rt, book_ref) == []
        assert (
            await srv.infra.db.fetch(
                "SELECT snapshot_id FROM snapshots WHERE book_ref = $1", book_ref
            )
            == []
        )
        assert (await put(client, late, b"late")).status_code == 200
        assert len(await objects(rt, book_ref)) == 1
        clock.advance(300 + 61)
        await rt.uploads().sweep()
        assert await objects(rt, book_ref) == []
        assert len(await objects(rt, other_ref)) == 1  # the neighbour's is untouched
        assert len(await rows(srv, other_ref)) == 1


async def test_openapi_describes_the_snapshot_endpoints(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    base = "/api/v1/books/{book_id}/snapshots"
    create = paths[base]["post"]
    data = create["responses"]["201"]["content"]["application/json"]["schema"]["properties"]
    assert data["data"]["required"] == [
        "snapshot_id",
        "upload_url",
        "upload_method",
        "upload_headers",
        "expires_in",
    ]
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "epoch",
        "covers_seq",
        "size_bytes",
    ]
    for status, codes in (("413", "PAYLOAD_TOO_LARGE QUOTA_EXCEEDED"), ("400", "VALIDATION_ERROR")):
        for wanted in codes.split():
            assert wanted in create["responses"][status]["description"]
    complete = paths[base + "/{snapshot_id}/complete"]["post"]["responses"]
    assert "UPLOAD_INCOMPLETE" in complete["409"]["description"]
    assert "SNAPSHOT_NOT_FOUND" in complete["404"]["description"]
    latest = paths[base + "/latest"]["get"]["responses"]
    assert "SNAPSHOT_NOT_FOUND" in latest["404"]["description"]
    ops = paths["/api/v1/books/{book_id}/ops"]["get"]["responses"]["200"]
    gap = ops["content"]["application/json"]["schema"]["properties"]["data"]["properties"]["gap"]
    assert gap["properties"]["snapshot"]["required"] == ["snapshot_id", "epoch", "covers_seq"]
