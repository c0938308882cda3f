"""DELETE /api/v1/books/{book_id} at the shared layer (docs/CONTRACT.md §3): members' rows, sync
records and the book go before the 204, capabilities' hooks run, and the audit keeps
only the erasure event."""

from __future__ import annotations

import httpx

from tests.privacy.support import join_book, new_book_id, register
from tests.support.keys import DeviceKey
from tests.support.services import InProcessServer


async def rows_naming(server: InProcessServer, book_ref: str, device_ids: list[str]) -> dict:
    db = server.infra.db
    found = {}
    for table in ("books", "devices", "sync_records", "photos"):
        found[table] = await db.fetch(f"SELECT * FROM {table} WHERE book_ref = $1", book_ref)
    found["devices by id"] = [
        r
        for d in device_ids
        for r in await db.fetch("SELECT * FROM devices WHERE device_id = $1", d)
    ]
    found["audit"] = await db.fetch(
        "SELECT * FROM audit_events WHERE book_ref = $1 ORDER BY id", book_ref
    )
    return found


async def test_erasure_leaves_only_the_erasure_event(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    infra = server.infra
    first, second, lost = DeviceKey(), DeviceKey(), DeviceKey()
    book_id = new_book_id()
    book_ref = infra.hasher.book_ref(book_id)
    assert (await register(client, first, book_id)).status_code == 201
    await join_book(client, infra, second, book_id)
    await join_book(client, infra, lost, book_id)
    revoked = await client.delete(
        f"/api/v1/books/{book_id}/devices/{lost.device_id}", headers=first.auth()
    )
    assert revoked.status_code == 204
    await infra.db.execute(
        "INSERT INTO sync_records (book_ref, ops_total, bytes_total, last_op_at)"
        " VALUES ($1, 3, 300, 1)",
        book_ref,
    )
    # A second book that must be untouched.
    bystander, other_book = DeviceKey(), new_book_id()
    await register(client, bystander, other_book)
    erased_refs: list[str] = []

    async def hook(ref: str) -> None:
        # Runs before the rows go, so a capability can still find what is its own.
        assert await infra.members.book_exists(ref)
        erased_refs.append(ref)

    infra.hooks.on_book_erased.append(hook)
    try:
        # A pending member, or a token for another book, may not erase.
        other = await client.delete(f"/api/v1/books/{book_id}", headers=bystander.auth(book_id))
        assert other.status_code == 403
        response = await client.delete(f"/api/v1/books/{book_id}", headers=second.auth())
        assert response.status_code == 204, response.text
    finally:
        infra.hooks.on_book_erased.remove(hook)
    assert erased_refs == [book_ref]

    left = await rows_naming(server, book_ref, [first.device_id, second.device_id])
    assert left["books"] == left["devices"] == left["sync_records"] == left["photos"] == []
    assert left["devices by id"] == []
    (event,) = left["audit"]
    assert (event["event_type"], event["action"]) == ("book", "erase")
    assert event["device_id"] == second.device_id
    # Nothing else of the book's devices remains in the audit either.
    for device in (first, second):
        events = await infra.db.fetch(
            "SELECT event_type FROM audit_events WHERE device_id = $1", device.device_id
        )
        assert [e["event_type"] for e in events] == (["book"] if device is second else [])
    # The revoked key stays refused, tied to no book.
    kept = await infra.members.get(lost.device_id)
    assert kept is not None and kept.revoked and kept.book_ref is None
    assert (await register(client, lost)).status_code == 403

    # Old tokens: 401 unknown_device; the keys may register again, even the same book.
    stale = await client.get(f"/api/v1/books/{book_id}/devices", headers=first.auth())
    assert stale.status_code == 401
    assert stale.json()["error"]["details"]["reason"] == "unknown_device"
    assert (await register(client, first, book_id)).status_code == 201
    # The other book is untouched.
    listed = await client.get(f"/api/v1/books/{other_book}/devices", headers=bystander.auth())
    assert listed.status_code == 200 and listed.json()["data"]["total_count"] == 1


async def test_revoking_the_last_member_erases_the_book(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    device, book_id = DeviceKey(), new_book_id()
    await register(client, device, book_id)
    book_ref = server.infra.hasher.book_ref(book_id)
    response = await client.delete(
        f"/api/v1/books/{book_id}/devices/{device.device_id}", headers=device.auth()
    )
    assert response.status_code == 204
    assert not await server.infra.members.book_exists(book_ref)
    events = await server.infra.db.fetch(
        "SELECT event_type, action FROM audit_events WHERE book_ref = $1", book_ref
    )
    assert [(e["event_type"], e["action"]) for e in events] == [("book", "erase")]
