"""Pairing (docs/CONTRACT.md §3 and §5) over real HTTP, on the embedded default and on Redis +
PostgreSQL, through the `backend` fixture."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.exceptions import CryptoError

from infra.clock import ManualClock
from pairing import sas
from tests.support.keys import DeviceKey
from tests.support.pairing import (
    VERIFY_LIMIT,
    Api,
    default_limits,
    error_code,
    limits_with,
    new_book_id,
    seed_of,
    starter,
)


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)


@pytest.fixture
def tuned(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    return starter(backend, tmp_path, request)


# --- the whole flow -------------------------------------------------------------------


async def test_full_flow_with_sas_and_book_key(api: Api) -> None:
    g, j = await api.founder(), await api.newcomer()
    generated = await api.generate(g)
    assert set(generated) == {"short_code", "pairing_id", "expires_at", "ttl_seconds"}
    assert len(generated["short_code"]) == 6 and generated["short_code"].isdigit()
    assert generated["ttl_seconds"] == 300 and generated["expires_at"].endswith("Z")
    pid = generated["pairing_id"]

    waiting = (await api.exchange(g, pid)).json()["data"]
    assert waiting == {
        "status": "waiting",
        "peer_public_key": None,
        "peer_device_id": None,
        "payloads": [],
    }

    verified = await api.verify(j, generated["short_code"])
    assert verified.status_code == 200, verified.text
    data = verified.json()["data"]
    assert data == {
        "matched": True,
        "status": "matched",
        "pairing_id": pid,
        "peer_public_key": g.public_b64,
        "peer_device_id": g.device_id,
        "book_id": g.book_id,
    }
    book_id = data["book_id"]

    # 1. G sees the match and commits to n_G.
    seen_by_g = (await api.exchange(g, pid)).json()["data"]
    assert seen_by_g["status"] == "matched"
    assert seen_by_g["peer_device_id"] == j.device_id
    pk_j = base64.b64decode(seen_by_g["peer_public_key"])
    pk_g = base64.b64decode(data["peer_public_key"])
    n_g = sas.new_nonce()
    assert (await api.exchange(g, pid, sas.commit_message(pk_g, n_g))).status_code == 200
    # 2. J sees the commitment, answers with n_J.
    seen_by_j = (await api.exchange(j, pid)).json()["data"]
    assert seen_by_j["peer_device_id"] == g.device_id
    tag, commit = sas.parse(base64.b64decode(seen_by_j["payloads"][0]))
    assert tag == sas.TAG_COMMIT
    n_j = sas.new_nonce()
    await api.exchange(j, pid, sas.nonce_message(n_j))
    # 3. G reveals n_G; J checks it against the commitment.
    got = (await api.exchange(g, pid, sas.reveal_message(n_g))).json()["data"]["payloads"]
    assert sas.parse(base64.b64decode(got[0])) == (sas.TAG_NONCE, n_j)
    reveal = (await api.exchange(j, pid)).json()["data"]["payloads"]
    assert len(reveal) == 2
    _, revealed = sas.parse(base64.b64decode(reveal[1]))
    sas.check_reveal(commit, pk_g, revealed)
    # 4. Both show the same digits.
    assert sas.sas(pk_g, pk_j, n_g, n_j) == sas.sas(pk_g, pk_j, revealed, n_j)

    # Until G confirms, J is pending: no book access.
    assert (await api.members(j, book_id)).status_code == 403
    # 5. G confirms and sends the book key, boxed to J.
    confirmed = await api.confirm(g, pid, True)
    assert confirmed.status_code == 200 and confirmed.json()["data"] == {"status": "confirmed"}
    book_key = b"\x42" * 32
    await api.exchange(g, pid, sas.seal_book_key(book_key, seed_of(g), pk_j))
    final = (await api.exchange(j, pid)).json()["data"]
    assert final["status"] == "confirmed"
    opened = sas.open_book_key(base64.b64decode(final["payloads"][-1]), seed_of(j), pk_g)
    assert opened == book_key

    j.book_id = book_id
    listed = await api.members(j, book_id)
    assert listed.status_code == 200
    assert {d["device_id"] for d in listed.json()["data"]["devices"]} == {
        g.device_id,
        j.device_id,
    }
    # The audit trail: hashed ids only, no code.
    events = (await api.client.get("/api/v1/audit", headers=api.auth(g))).json()["data"]
    actions = [(e["event_type"], e["action"], e["result"]) for e in events["events"]]
    assert ("pairing", "generate", "success") in actions
    assert ("pairing", "confirm", "confirmed") in actions
    assert ("pairing", "exchange", "success") in actions
    assert generated["short_code"] not in str(events)
    assert book_id not in str(events)


# --- codes ----------------------------------------------------------------------------


async def test_wrong_malformed_and_reused_codes(api: Api) -> None:
    g = await api.founder()
    code = (await api.generate(g))["short_code"]
    j, k = await api.newcomer(), await api.newcomer()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    response = await api.verify(j, wrong)
    assert response.status_code == 400 and error_code(response) == "INVALID_SHORT_CODE"
    assert code not in response.text and wrong not in response.text
    for malformed in ("1234567", "12a456", "١٢٣٤٥٦"):  # 4 failures of 5
        response = await api.verify(j, malformed)
        assert error_code(response) == "INVALID_SHORT_CODE", malformed
    typed = await api.verify(k, int(code))
    assert typed.status_code == 400 and error_code(typed) == "VALIDATION_ERROR"
    assert typed.json()["error"]["details"]["field"] == "short_code"
    assert (await api.verify(k, code)).status_code == 200
    reused = await api.verify(await api.newcomer(), code)
    assert reused.status_code == 400 and error_code(reused) == "INVALID_SHORT_CODE"


async def test_expired_code_then_tombstone(tuned: Any) -> None:
    async with tuned(pairing_code_ttl_s=1) as (_, api):
        g, j = await api.founder(), await api.newcomer()
        generated = await api.generate(g)
        assert generated["ttl_seconds"] == 1
        await asyncio.sleep(1.3)
        for _ in range(2):  # the tombstone stays, the code is never revived
            response = await api.verify(j, generated["short_code"])
            assert response.status_code == 400 and error_code(response) == "SHORT_CODE_EXPIRED"
        gone = await api.exchange(g, generated["pairing_id"])
        assert gone.status_code == 404 and error_code(gone) == "PAIRING_NOT_FOUND"


async def test_codes_are_unique_among_live_codes(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([42, 42, 42, 77])
    monkeypatch.setattr("pairing.service.secrets.randbelow", lambda n: next(draws))
    g = await api.founder()
    first, second = await api.generate(g), await api.generate(g)
    assert (first["short_code"], second["short_code"]) == ("000042", "000077")
    assert first["pairing_id"] != second["pairing_id"]


async def test_tombstone_lasts_300_seconds_and_blocks_reuse(
    tuned: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(time.time())
    async with tuned(clock=clock) as (_, api):
        g, j = await api.founder(), await api.newcomer()
        monkeypatch.setattr("pairing.service.secrets.randbelow", lambda n: 123456)
        code = (await api.generate(g))["short_code"]
        clock.advance(301)
        # Expired, but its tombstone still holds the code: no new code may take it.
        assert error_code(await api.post("/pairing/generate", g, {"book_id": g.book_id})) == (
            "SERVICE_UNAVAILABLE"
        )
        assert error_code(await api.verify(j, code)) == "SHORT_CODE_EXPIRED"
        clock.advance(300)
        assert error_code(await api.verify(j, code)) == "INVALID_SHORT_CODE"
        assert (await api.generate(g))["short_code"] == code  # free again


async def test_twenty_concurrent_verifies_one_winner(tuned: Any) -> None:
    async with tuned(rate_limits=limits_with(default_limits(), **{VERIFY_LIMIT: None})) as (
        _,
        api,
    ):
        g = await api.founder()
        code = (await api.generate(g))["short_code"]
        joiners = [await api.newcomer() for _ in range(20)]
        answers = await asyncio.gather(*(api.verify(j, code) for j in joiners))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] + [400] * 19
        assert {error_code(r) for r in answers if r.status_code == 400} == {"INVALID_SHORT_CODE"}
        ((winner, won),) = [
            (j, r) for j, r in zip(joiners, answers, strict=True) if r.status_code == 200
        ]
        seen = (await api.exchange(g, won.json()["data"]["pairing_id"])).json()["data"]
        assert seen["peer_device_id"] == winner.device_id


async def test_device_in_a_book_does_not_consume_a_code(api: Api) -> None:
    g, other = await api.founder(), await api.founder()
    code = (await api.generate(g))["short_code"]
    refused = await api.verify(other, code)
    assert refused.status_code == 409 and error_code(refused) == "DEVICE_EXISTS"
    assert (await api.verify(await api.newcomer(), code)).status_code == 200


async def test_book_full_counts_pending_members(tuned: Any) -> None:
    async with tuned(max_devices_per_book=2) as (_, api):
        g, _, _ = await api.paired()  # G + pending J = 2
        code = (await api.generate(g))["short_code"]
        full = await api.verify(await api.newcomer(), code)
        assert full.status_code == 409 and error_code(full) == "BOOK_FULL"


# --- limits ---------------------------------------------------------------------------


async def test_brute_force_reaches_429_per_device_and_per_ip(tuned: Any) -> None:
    proxy = (ipaddress.ip_network("127.0.0.1/32"),)
    async with tuned(trusted_proxies=proxy) as (_, api):
        g = await api.founder()
        code = (await api.generate(g))["short_code"]
        wrong = f"{(int(code) + 7) % 10**6:06d}"
        a, b, c = await api.newcomer(), await api.newcomer(), await api.newcomer()

        def ip(n: int) -> dict[str, Any]:
            return {"headers": {"X-Forwarded-For": f"203.0.113.{n}"}}

        for _ in range(5):
            response = await api.verify(a, wrong, **ip(1))
            assert error_code(response) == "INVALID_SHORT_CODE"
        limited = await api.verify(a, code, **ip(1))  # even the right code: refused unseen
        assert limited.status_code == 429
        assert error_code(limited) == "RATE_LIMIT_EXCEEDED"
        details = limited.json()["error"]["details"]
        assert details["limit"] == 5 and details["window"] == 600 and details["retry_after"] > 0
        assert limited.headers["X-RateLimit-Limit"] == "5"
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert int(limited.headers["Retry-After"]) > 0
        # The address is spent too, for another device; the device from another address.
        assert (await api.verify(b, code, **ip(1))).status_code == 429
        assert (await api.verify(a, code, **ip(2))).status_code == 429
        # Nothing was consumed: a fresh device on a fresh address still joins.
        assert (await api.verify(c, code, **ip(3))).status_code == 200


async def test_successes_do_not_count_as_failures(tuned: Any) -> None:
    limits = limits_with(default_limits(), **{VERIFY_LIMIT: "1 per 10 minutes"})
    async with tuned(rate_limits=limits) as (_, api):
        for _ in range(3):
            await api.paired()


async def test_generate_limit(tuned: Any) -> None:
    limits = limits_with(default_limits(), RATE_LIMIT_PAIRING_GENERATE="2/hour")
    async with tuned(rate_limits=limits) as (_, api):
        g = await api.founder()
        await api.generate(g)
        await api.generate(g)
        third = await api.post("/pairing/generate", g, {"book_id": g.book_id})
        assert third.status_code == 429 and error_code(third) == "RATE_LIMIT_EXCEEDED"


# --- who may call what ----------------------------------------------------------------


async def test_outsiders_get_404_from_exchange(api: Api) -> None:
    g, j, session = await api.paired()
    pid = session["pairing_id"]
    member = DeviceKey()
    await api.register(member, new_book_id())
    for outsider in (member, await api.newcomer()):
        response = await api.exchange(outsider, pid, b"\x02" + b"x" * 32)
        assert response.status_code == 404 and error_code(response) == "PAIRING_NOT_FOUND"
    unknown = await api.exchange(g, "pair_" + "A" * 24)
    assert unknown.status_code == 404
    assert (await api.exchange(j, pid)).json()["data"]["payloads"] == []


async def test_pending_member_refused_everywhere_but_exchange(api: Api) -> None:
    g, j, session = await api.paired()
    book_id, pid = session["book_id"], session["pairing_id"]
    calls = [
        api.post("/pairing/generate", j, {"book_id": book_id}, book_id),
        api.post("/pairing/confirm", j, {"pairing_id": pid, "accept": True}, book_id),
        api.post("/pairing/confirm", j, {"pairing_id": pid, "accept": True}, None),
        api.post("/pairing/verify", j, {"short_code": "123456", "public_key": j.public_b64}),
        api.members(j, book_id),
        api.client.delete(
            f"/api/v1/books/{book_id}/devices/{g.device_id}", headers=api.auth(j, book_id)
        ),
        api.client.delete(f"/api/v1/books/{book_id}", headers=api.auth(j, book_id)),
        api.client.get("/api/v1/audit", headers=api.auth(j, None)),
    ]
    for response in [await c for c in calls]:
        assert response.status_code == 403, response.request.url
        assert response.json()["error"]["details"]["reason"] == "pending"
    assert (await api.exchange(j, pid)).status_code == 200
    # The joiner's self-confirm changed nothing.
    assert (await api.exchange(g, pid)).json()["data"]["status"] == "matched"


async def test_confirm_rules(api: Api) -> None:
    g = await api.founder()
    generated = await api.generate(g)
    pid = generated["pairing_id"]
    early = await api.confirm(g, pid, True)
    assert early.status_code == 400 and error_code(early) == "VALIDATION_ERROR"
    j = await api.newcomer()
    assert (await api.verify(j, generated["short_code"])).status_code == 200
    other = DeviceKey()
    await api.register(other, new_book_id())
    assert (await api.confirm(other, pid, True)).status_code == 404
    bad = await api.post("/pairing/confirm", g, {"pairing_id": pid, "accept": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "accept"
    first = await api.confirm(g, pid, True)
    again = await api.confirm(g, pid, True)
    changed_mind = await api.confirm(g, pid, False)
    assert [r.json()["data"]["status"] for r in (first, again, changed_mind)] == ["confirmed"] * 3


async def test_reject_removes_the_joiner_who_may_pair_again(api: Api) -> None:
    g, j, session = await api.paired()
    pid = session["pairing_id"]
    rejected = await api.confirm(g, pid, False)
    assert rejected.json()["data"] == {"status": "rejected"}
    assert (await api.confirm(g, pid, False)).json()["data"] == {"status": "rejected"}
    assert (await api.exchange(j, pid)).json()["data"]["status"] == "rejected"
    closed = await api.exchange(g, pid, b"\x04" + b"k" * 60)
    assert closed.status_code == 400 and error_code(closed) == "VALIDATION_ERROR"
    listed = await api.members(g, session["book_id"])
    assert [d["device_id"] for d in listed.json()["data"]["devices"]] == [g.device_id]
    code = (await api.generate(g))["short_code"]
    assert (await api.verify(j, code)).status_code == 200


async def test_session_expiry_removes_the_joiner(tuned: Any) -> None:
    clock = ManualClock(time.time())
    async with tuned(clock=clock) as (srv, api):
        g, j, session = await api.paired()
        pid = session["pairing_id"]
        assert (await srv.infra.members.get(j.device_id)).role == "pending"
        clock.advance(601)
        gone = await api.exchange(g, pid)
        assert gone.status_code == 404 and error_code(gone) == "PAIRING_NOT_FOUND"
        assert (await api.confirm(g, pid, True)).status_code == 404
        deadline = time.monotonic() + 5
        while (await srv.infra.members.get(j.device_id)).book_ref is not None:
            assert time.monotonic() < deadline, "the sweeper did not remove the joiner"
            await asyncio.sleep(0.1)
        assert (await api.exchange(j, pid)).status_code == 404
        code = (await api.generate(g))["short_code"]
        assert (await api.verify(j, code)).status_code == 200


async def test_revoking_the_generator_drops_its_codes_and_sessions(api: Api) -> None:
    g = await api.founder()
    m = await api.newcomer()
    m_session = (await api.verify(m, (await api.generate(g))["short_code"])).json()["data"]
    assert (await api.confirm(g, m_session["pairing_id"], True)).status_code == 200
    m.book_id = g.book_id
    j = await api.newcomer()
    j_session = (await api.verify(j, (await api.generate(g))["short_code"])).json()["data"]
    live_code = (await api.generate(g))["short_code"]

    revoked = await api.client.delete(
        f"/api/v1/books/{g.book_id}/devices/{g.device_id}", headers=api.auth(m)
    )
    assert revoked.status_code == 204
    gone = await api.exchange(j, j_session["pairing_id"])
    assert gone.status_code == 404 and error_code(gone) == "PAIRING_NOT_FOUND"
    dead = await api.verify(await api.newcomer(), live_code)
    assert error_code(dead) == "INVALID_SHORT_CODE"
    listed = await api.members(m, str(g.book_id))
    assert [d["device_id"] for d in listed.json()["data"]["devices"]] == [m.device_id]
    # J left the book with the session and may join again.
    assert (await api.verify(j, (await api.generate(m))["short_code"])).status_code == 200


async def test_erasing_the_book_drops_its_codes_and_sessions(api: Api) -> None:
    g = await api.founder()
    code = (await api.generate(g))["short_code"]
    erased = await api.client.delete(f"/api/v1/books/{g.book_id}", headers=api.auth(g))
    assert erased.status_code == 204
    dead = await api.verify(await api.newcomer(), code)
    assert error_code(dead) == "INVALID_SHORT_CODE"


async def test_a_server_swapping_keys_is_caught(api: Api) -> None:
    """The real server in the middle, with the test playing a man in the middle that
    hands each side a key of its own: the SAS differ and J cannot open the book key."""
    g, j = await api.founder(), await api.newcomer()
    mallory_g, mallory_j = DeviceKey(), DeviceKey()  # posing as G to J, as J to G
    generated = await api.generate(g)
    pid = generated["pairing_id"]
    verified = (await api.verify(j, generated["short_code"])).json()["data"]
    pk_g_at_j = mallory_g.public_raw  # the swap: J is told Mallory's key ...
    assert base64.b64decode(verified["peer_public_key"]) == g.public_raw
    seen = (await api.exchange(g, pid)).json()["data"]
    assert base64.b64decode(seen["peer_public_key"]) == j.public_raw
    pk_j_at_g = mallory_j.public_raw  # ... and G is told the other one.

    n_g, n_j = sas.new_nonce(), sas.new_nonce()
    await api.exchange(g, pid, sas.commit_message(g.public_raw, n_g))
    commit_seen = (await api.exchange(j, pid)).json()["data"]["payloads"][0]
    await api.exchange(j, pid, sas.nonce_message(n_j))
    await api.exchange(g, pid, sas.reveal_message(n_g))
    payloads = (await api.exchange(j, pid)).json()["data"]["payloads"]
    _, commit = sas.parse(base64.b64decode(commit_seen))
    _, revealed = sas.parse(base64.b64decode(payloads[1]))
    # The commitment was made over G's real key, so J, holding Mallory's, aborts here ...
    with pytest.raises(sas.PairingAbort):
        sas.check_reveal(commit, pk_g_at_j, revealed)
    # ... and had Mallory re-committed, the digits on the two screens still differ.
    at_g = sas.sas(g.public_raw, pk_j_at_g, n_g, n_j)
    at_j = sas.sas(pk_g_at_j, j.public_raw, revealed, n_j)
    assert at_g != at_j
    # G, fooled, seals the book key to the key it was given: J cannot open it.
    sealed = sas.seal_book_key(b"\x07" * 32, seed_of(g), pk_j_at_g)
    await api.exchange(g, pid, sealed)
    box = (await api.exchange(j, pid)).json()["data"]["payloads"][-1]
    with pytest.raises(CryptoError):
        sas.open_book_key(base64.b64decode(box), seed_of(j), pk_g_at_j)
