"""Audit events (docs/CONTRACT.md §7): what is recorded, with hashed identifiers only; refusals
throttled; the 90-day purge that runs inside the server; GET /audit, paged, own events only."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.audit import Audit, Throttle
from infra.clock import ManualClock
from infra.metrics import REGISTRY
from infra.settings import Settings
from tests.conftest import make_settings, reset_production
from tests.privacy.support import new_book_id, register
from tests.support.keys import DeviceKey
from tests.support.relay import open_peer
from tests.support.services import InProcessServer

DAY = 24 * 3600


async def events_of(infra: Any, **where: Any) -> list[dict[str, Any]]:
    rows = await infra.db.fetch("SELECT * FROM audit_events ORDER BY id")
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


async def export(client: httpx.AsyncClient, device: DeviceKey, query: str = "") -> httpx.Response:
    return await client.get("/api/v1/audit" + query, headers=device.auth())


async def test_registration_is_audited_with_hashed_ids(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    device, book_id = DeviceKey(), new_book_id()
    assert (await register(client, device, book_id, headers={"User-Agent": "pocket/1"})).is_success
    (event,) = await events_of(server.infra, event_type="device")
    assert (event["action"], event["result"]) == ("register", "success")
    assert event["device_id"] == device.device_id
    assert event["book_ref"] == server.infra.hasher.book_ref(book_id)
    assert event["ip_ref"] == server.infra.hasher.ip_ref_for_audit("127.0.0.1")
    assert event["user_agent"] == "pocket/1"
    assert book_id not in str(event) and "127.0.0.1" not in str(event)


async def test_export_pages_newest_first_and_shows_only_own_events(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    mine, other = DeviceKey(), DeviceKey()
    await register(client, mine, new_book_id())
    await register(client, other, new_book_id())
    for i in range(6):
        await server.infra.audit.record("test", f"mine-{i}", "success", device_id=mine.device_id)
        await server.infra.audit.record("test", f"other-{i}", "success", device_id=other.device_id)
    seen: list[dict[str, Any]] = []
    cursor: int | None = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&before={cursor}" if cursor else "")
        response = await export(client, mine, query)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert len(data["events"]) <= 3
        seen.extend(data["events"])
        pages += 1
        cursor = data["next_cursor"]
        if cursor is None:
            break
    assert pages == 3  # 7 events: 3 + 3 + 1
    assert [e["action"] for e in seen] == [f"mine-{i}" for i in range(5, -1, -1)] + ["register"]
    assert {e["device_id"] for e in seen} == {mine.device_id}
    ids = [e["event_id"] for e in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert set(seen[0]) >= {
        "event_type", "action", "result", "device_id", "book_ref", "ip_ref", "user_agent",
        "timestamp", "request_id", "event_id",
    }  # fmt: skip
    # The other device sees its own and nothing of mine.
    theirs = (await export(client, other, "?limit=200")).json()["data"]["events"]
    assert theirs and {e["device_id"] for e in theirs} == {other.device_id}


async def test_export_limit_is_clamped_and_checked(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    device = DeviceKey()
    await register(client, device, new_book_id())
    await server.infra.db.executemany(
        "INSERT INTO audit_events (event_type, action, result, device_id, created_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        [("test", "bulk", "success", device.device_id, int(time.time()))] * 230,
    )
    data = (await export(client, device, "?limit=5000")).json()["data"]
    assert len(data["events"]) == 200 and data["next_cursor"] is not None
    assert len((await export(client, device)).json()["data"]["events"]) == 50
    for bad in ("?limit=abc", "?limit=0", "?before=-1"):
        response = await export(client, device, bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_forbidden_is_audited_for_the_verified_device_once_a_minute(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    device, book_id = DeviceKey(), new_book_id()
    await register(client, device, book_id)
    elsewhere = new_book_id()
    for _ in range(5):
        response = await client.get(
            f"/api/v1/books/{elsewhere}/devices", headers=device.auth(elsewhere)
        )
        assert response.status_code == 403
    refusals = await events_of(server.infra, event_type="auth")
    assert len(refusals) == 1  # throttled: one event per device and reason a minute
    (event,) = refusals
    assert (event["action"], event["result"]) == ("not_member", "forbidden")
    assert event["device_id"] == device.device_id
    assert event["ip_ref"] == server.infra.hasher.ip_ref_for_audit("127.0.0.1")
    actions = [e["action"] for e in (await export(client, device)).json()["data"]["events"]]
    assert "not_member" in actions


async def test_invalid_token_never_names_the_claimed_device(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    victim, attacker = DeviceKey(), DeviceKey()
    book_id = new_book_id()
    await register(client, victim, book_id)
    forged = attacker.token(book_id, sub=victim.device_id)
    for _ in range(3):
        response = await client.get(
            f"/api/v1/books/{book_id}/devices", headers={"Authorization": f"Bearer {forged}"}
        )
        assert response.status_code == 401
    (event,) = await events_of(server.infra, event_type="auth")
    assert (event["action"], event["result"]) == ("invalid", "invalid_token")
    assert event["device_id"] is None and event["ip_ref"] is not None
    actions = [e["action"] for e in (await export(client, victim)).json()["data"]["events"]]
    assert actions == ["register"]


async def test_rate_limit_hits_are_audited_once_per_key_a_minute(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    limits = Settings.from_env(environ={"RATE_LIMIT_REGISTRATION": "1/minute"}, env_file=None)
    s = make_settings(backend, tmp_path, request, with_s3=False, rate_limits=limits.rate_limits)
    if backend == "production":
        await reset_production(s)
    labels = {"limit": "RATE_LIMIT_REGISTRATION"}
    counted = REGISTRY.get_sample_value("homepocket_rate_limited_total", labels) or 0.0
    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        statuses = [(await register(client, DeviceKey())).status_code for _ in range(4)]
        assert statuses == [201, 429, 429, 429]
        (event,) = await events_of(srv.infra, event_type="rate_limit")
        assert (event["action"], event["result"]) == ("registration", "refused")
        assert event["device_id"] is None
        assert event["ip_ref"] == srv.infra.hasher.ip_ref_for_audit("127.0.0.1")
        # Every refusal is counted in the metric, even the ones not written to the audit.
        assert REGISTRY.get_sample_value("homepocket_rate_limited_total", labels) == counted + 3


def test_throttle_is_per_key_bounded_and_forgets() -> None:
    clock = ManualClock()
    throttle = Throttle(clock, interval_s=60, budget=3)
    assert throttle.allow("a") and not throttle.allow("a")
    assert throttle.allow("b") and throttle.allow("c")
    assert not throttle.allow("d")  # the minute's budget is spent, whatever the key
    assert throttle.suppressed == 2
    clock.advance(61)
    assert throttle.allow("a") and throttle.allow("d")
    assert len(throttle._last) == 2  # expired keys were forgotten


async def test_purge_drops_events_older_than_90_days(settings: Settings) -> None:
    clock = ManualClock(time.time())
    async with InProcessServer(settings, clock=clock) as srv:
        audit: Audit = srv.infra.audit
        await audit.record("test", "old", "success", device_id="a" * 32)
        clock.advance(89 * DAY)
        await audit.record("test", "young", "success", device_id="a" * 32)
        assert await audit.purge() == 0
        clock.advance(DAY + 1)
        assert await audit.purge() == 1
        assert [e["action"] for e in await events_of(srv.infra)] == ["young"]


async def test_the_server_purges_by_itself(settings: Settings) -> None:
    clock = ManualClock(time.time())
    async with InProcessServer(settings, clock=clock) as srv:
        await srv.infra.audit.record("test", "old", "success")
    clock.advance(90 * DAY + 1)
    async with InProcessServer(settings, clock=clock) as srv:
        await srv.infra.audit.record("test", "new", "success")
        for _ in range(100):  # the purge loop starts with the server
            if [e["action"] for e in await events_of(srv.infra)] == ["new"]:
                break
            await asyncio.sleep(0.02)
        assert [e["action"] for e in await events_of(srv.infra)] == ["new"]


async def test_socket_handshake_refusals_are_audited_with_hashed_ids(
    client: httpx.AsyncClient, server: InProcessServer
) -> None:
    device, attacker, book_id, elsewhere = DeviceKey(), DeviceKey(), new_book_id(), new_book_id()
    await register(client, device, book_id)
    wrong_book = device.token(elsewhere)
    forged = attacker.token(book_id, sub=device.device_id)
    for target, token, closed in (
        (elsewhere, wrong_book, (4403, "FORBIDDEN")),
        (book_id, forged, (4401, "INVALID_TOKEN")),
    ):
        peer = await open_peer(server.ws_url, target, device, token=token, welcome=False)
        assert await peer.closed() == closed
    events = {e["result"]: e for e in await events_of(server.infra, event_type="auth")}
    assert set(events) == {"forbidden", "invalid_token"}
    ip_ref = server.infra.hasher.ip_ref_for_audit("127.0.0.1")
    refused = events["forbidden"]  # the token verified: the device is named
    assert (refused["action"], refused["device_id"]) == ("not_member", device.device_id)
    invalid = events["invalid_token"]  # only claimed: never named
    assert (invalid["action"], invalid["device_id"]) == ("invalid", None)
    assert refused["ip_ref"] == invalid["ip_ref"] == ip_ref
    text = str(list(events.values()))
    for secret in (book_id, elsewhere, wrong_book, forged, "127.0.0.1"):
        assert secret not in text
    actions = [e["action"] for e in (await export(client, device)).json()["data"]["events"]]
    assert "not_member" in actions
