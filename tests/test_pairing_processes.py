"""Two real `homepocket-relay serve` processes sharing Redis and PostgreSQL act as one
pairing service: one code, twenty racing verifies across both, exactly one winner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings, reset_production
from tests.support.pairing import Api, error_code
from tests.support.services import ID_HASH_KEY, ServerProcess


async def test_one_winner_across_two_processes(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = make_settings("production", tmp_path, request, with_s3=False)
    await reset_production(settings)
    env = {
        "DATABASE_URL": str(settings.database_url),
        "REDIS_URL": str(settings.redis_url),
        "ID_HASH_KEY": ID_HASH_KEY,
        "RATE_LIMIT_PAIRING_VERIFY_FAILURES": "off",
        "RATE_LIMIT_REGISTRATION": "off",
        "LOG_LEVEL": "WARNING",
    }
    servers = [ServerProcess(env, tmp_path / f"p{n}") for n in (1, 2)]
    try:
        for server in servers:
            server.start()
        async with (
            httpx.AsyncClient(base_url=servers[0].url, timeout=15) as one,
            httpx.AsyncClient(base_url=servers[1].url, timeout=15) as two,
        ):
            await _ready(one)
            await _ready(two)
            a, b = Api(one), Api(two)
            g = await a.founder()
            code = (await a.generate(g))["short_code"]
            joiners = [await (a if n % 2 else b).newcomer() for n in range(20)]
            answers = await asyncio.gather(
                *((a if n % 2 else b).verify(j, code) for n, j in enumerate(joiners))
            )
            assert sorted(r.status_code for r in answers) == [200] + [400] * 19
            assert {error_code(r) for r in answers if r.status_code != 200} == {
                "INVALID_SHORT_CODE"
            }
            ((winner, won),) = [
                (j, r) for j, r in zip(joiners, answers, strict=True) if r.status_code == 200
            ]
            pid = won.json()["data"]["pairing_id"]
            # Each process sees the session the other one wrote.
            for api in (a, b):
                seen = (await api.exchange(g, pid)).json()["data"]
                assert seen["status"] == "matched"
                assert seen["peer_device_id"] == winner.device_id
            assert (await b.confirm(g, pid, True)).json()["data"] == {"status": "confirmed"}
            assert (await a.exchange(winner, pid)).json()["data"]["status"] == "confirmed"
    finally:
        for server in servers:
            if server.proc is not None:
                server.stop()


async def _ready(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("server not ready")
