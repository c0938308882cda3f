"""Pairing's edges: exchange limits, parallel guessing, live messages, what Redis holds,
an unreachable store, the OpenAPI document. Real HTTP on both backends."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.pairing import Api, error_code, starter
from tests.support.services import redis_server


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)


@pytest.fixture
def tuned(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    return starter(backend, tmp_path, request)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def test_exchange_payload_rules(api: Api) -> None:
    g, j, session = await api.paired()
    pid = session["pairing_id"]
    sent = [bytes([i]) * (i + 1) for i in range(8)]
    for payload in sent:
        assert (await api.exchange(g, pid, payload)).status_code == 200
    ninth = await api.exchange(g, pid, b"\x09")
    assert ninth.status_code == 400 and error_code(ninth) == "VALIDATION_ERROR"
    assert ninth.json()["error"]["details"]["field"] == "payload"
    seen = (await api.exchange(j, pid)).json()["data"]["payloads"]
    assert [base64.b64decode(p) for p in seen] == sent  # in order, byte for byte

    largest = b"\xaa" * 65536
    assert (await api.exchange(j, pid, largest)).status_code == 200
    for bad in (b64(b"\xaa" * 65537), "not base64!", "QQ=", "QR==", ""):
        response = await api.exchange(j, pid, bad)
        assert response.status_code == 400, bad[:10]
        assert response.json()["error"]["details"]["field"] == "payload"
    got = (await api.exchange(g, pid)).json()["data"]["payloads"]
    assert got == [b64(largest)]
    wrong_type = await api.post("/pairing/exchange", g, {"pairing_id": 7}, None)
    assert wrong_type.json()["error"]["details"]["field"] == "pairing_id"


async def test_parallel_guessing_cannot_overshoot_the_limit(tuned: Any) -> None:
    proxy = (ipaddress.ip_network("127.0.0.1/32"),)
    async with tuned(trusted_proxies=proxy) as (_, api):
        g = await api.founder()
        code = (await api.generate(g))["short_code"]
        guesses = [f"{(int(code) + n) % 10**6:06d}" for n in range(1, 31)]
        attacker = await api.newcomer()
        answers = await asyncio.gather(
            *(
                api.verify(attacker, guess, headers={"X-Forwarded-For": "198.51.100.9"})
                for guess in guesses
            )
        )
        codes = [error_code(r) for r in answers]
        assert codes.count("INVALID_SHORT_CODE") + codes.count("RATE_LIMIT_EXCEEDED") == 30
        # Guesses in flight are counted against the budget, so the burst may stop short
        # of the limit but never past it; one by one, the rest of the budget goes.
        failures = codes.count("INVALID_SHORT_CODE")
        assert 1 <= failures <= 5
        for guess in guesses[: 5 - failures]:
            response = await api.verify(
                attacker, guess, headers={"X-Forwarded-For": "198.51.100.9"}
            )
            assert error_code(response) == "INVALID_SHORT_CODE"
        after = await api.verify(attacker, code, headers={"X-Forwarded-For": "198.51.100.10"})
        assert error_code(after) == "RATE_LIMIT_EXCEEDED"


class RecordingLive:
    """Stands in for the relay's channel: records what pairing asks it to deliver."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def online_devices(self, book_ref: str) -> set[str]:
        return set()

    async def send_to_device(self, book_ref: str, device_id: str, message: dict[str, Any]) -> None:
        self.calls.append(("device", book_ref, device_id, message))

    async def send_to_book(
        self, book_ref: str, message: dict[str, Any], exclude_device: str | None = None
    ) -> None:
        self.calls.append(("book", book_ref, exclude_device, message))

    async def close_device(self, book_ref: str, device_id: str, code: int, reason: str) -> None:
        self.calls.append(("close_device", book_ref, device_id, code))

    async def close_book(self, book_ref: str, code: int, reason: str) -> None:
        self.calls.append(("close_book", book_ref, code))


async def test_generator_is_told_and_members_see_the_joiner(tuned: Any) -> None:
    async with tuned() as (srv, api):
        live = RecordingLive()
        srv.infra.live = live
        g, j, session = await api.paired()
        book_ref = srv.infra.hasher.book_ref(session["book_id"])
        assert live.calls == [
            (
                "device",
                book_ref,
                g.device_id,
                {
                    "type": "pairing_completed",
                    "pairing_id": session["pairing_id"],
                    "peer_device_id": j.device_id,
                    "peer_public_key": j.public_b64,
                },
            )
        ]
        live.calls.clear()
        await api.confirm(g, session["pairing_id"], True)
        await api.confirm(g, session["pairing_id"], True)  # a repeat announces nothing
        assert live.calls == [
            (
                "book",
                book_ref,
                j.device_id,
                {"type": "presence", "device_id": j.device_id, "status": "joined"},
            )
        ]


async def test_openapi_documents_pairing(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for name in ("generate", "verify", "exchange", "confirm"):
        operation = paths[f"/api/v1/pairing/{name}"]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["required"]
        assert "200" in operation["responses"] or "201" in operation["responses"]
    verify_errors = str(paths["/api/v1/pairing/verify"]["post"]["responses"])
    for code in ("INVALID_SHORT_CODE", "SHORT_CODE_EXPIRED", "DEVICE_EXISTS", "BOOK_FULL"):
        assert code in verify_errors


async def _redis_dump(url: str) -> list[tuple[bytes, bytes]]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        out = []
        async for key in client.scan_iter():
            kind = await client.type(key)
            if kind == b"hash":
                value = b" ".join(b"%s=%s" % kv for kv in (await client.hgetall(key)).items())
            elif kind == b"list":
                value = b" ".join(await client.lrange(key, 0, -1))
            elif kind == b"set":
                value = b" ".join(await client.smembers(key))
            elif kind == b"zset":
                value = b" ".join(await client.zrange(key, 0, -1))
            else:
                value = bytes(await client.dump(key) or b"")
            out.append((key, value))
        return out
    finally:
        await client.aclose()


async def test_redis_keys_hold_no_code_and_no_book_id(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend != "production":
        pytest.skip("what Redis holds")
    async with starter(backend, tmp_path, request)(pairing_session_ttl_s=1) as (srv, api):
        g = await api.founder()
        live_code = (await api.generate(g))["short_code"]
        _, _, session = await api.paired()
        url = str(srv.settings.redis_url)
        dump = await _redis_dump(url)
        book_ids = [str(g.book_id), session["book_id"]]
        for key, value in dump:
            assert live_code.encode() not in key and live_code.encode() not in value
            for book_id in book_ids:
                assert book_id.encode() not in key
        holders = [k for k, v in dump if session["book_id"].encode() in v]
        assert holders == [b"hp:pair:s:" + session["pairing_id"].encode()]
        await asyncio.sleep(1.3)  # the session's ten minutes, shortened
        for key, value in await _redis_dump(url):
            assert session["book_id"].encode() not in key + value


async def test_unreachable_store_fails_closed(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend != "production":
        pytest.skip("needs a Redis to lose")
    with redis_server() as private_url:
        launch = starter(backend, tmp_path, request)
        async with launch(redis_url=private_url) as (_, api):
            g, j = await api.founder(), await api.newcomer()
            code = (await api.generate(g))["short_code"]
            import redis.asyncio as aioredis

            client = aioredis.from_url(private_url)
            try:
                await client.shutdown(nosave=True)
            except Exception:  # the server closes the connection as it goes
                pass
            finally:
                await client.aclose()
            generated = await api.post("/pairing/generate", g, {"book_id": g.book_id})
            verified = await api.verify(j, code)
            exchanged = await api.exchange(g, "pair_" + "A" * 24)  # no limit: the store itself
            for response in (generated, verified, exchanged):
                assert response.status_code == 503, response.text
                assert error_code(response) == "SERVICE_UNAVAILABLE"
