"""Rate limits of docs/CONTRACT.md §6 at the shared layer: registration per IP, the 429 envelope and
headers, configuration by variable, X-Forwarded-For only from trusted proxies, one
counter for many instances, and failing closed when the counter store is down."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.context import check_call, count_call, enforce
from infra.errors import ApiError
from infra.settings import RATE_LIMIT_DEFAULTS, Settings
from tests.conftest import make_settings, reset_production
from tests.privacy.support import register
from tests.support.keys import DeviceKey
from tests.support.services import InProcessServer, redis_server


def limits(**env: str) -> dict[str, Any]:
    """Rate limits parsed from environment variables, as an operator sets them."""
    return {"rate_limits": Settings.from_env(environ=env, env_file=None).rate_limits}


async def limited_settings(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, **overrides: Any
) -> Settings:
    s = make_settings(backend, tmp_path, request, with_s3=False, **overrides)
    if backend == "production":
        await reset_production(s)
    return s


async def test_registration_is_limited_per_ip_with_the_contract_429(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await limited_settings(
        backend, tmp_path, request, **limits(RATE_LIMIT_REGISTRATION="3/minute")
    )
    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        for _ in range(3):
            assert (await register(client, DeviceKey())).status_code == 201
        before = time.time()
        refused = await register(client, DeviceKey())
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "RATE_LIMIT_EXCEEDED"
        details = error["details"]
        assert details["limit"] == 3 and details["window"] == 60
        assert 1 <= details["retry_after"] <= 60
        headers = refused.headers
        assert headers["X-RateLimit-Limit"] == "3"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert abs(int(headers["Retry-After"]) - details["retry_after"]) <= 1
        assert math.floor(before) <= int(headers["X-RateLimit-Reset"]) <= before + 61
        # Every call counts, refused or not: a refused one is a 429 as well.
        assert (await register(client, DeviceKey())).status_code == 429
        # The refused device was never stored.
        assert await srv.infra.members.get(DeviceKey().device_id) is None


async def test_a_limit_can_be_turned_off(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await limited_settings(backend, tmp_path, request, **limits(RATE_LIMIT_REGISTRATION="off"))
    assert s.rate_limit("RATE_LIMIT_REGISTRATION") is None
    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        for _ in range(12):  # over the default of 10/hour
            assert (await register(client, DeviceKey())).status_code == 201


def test_every_limit_has_its_variable_and_default() -> None:
    defaults = Settings.from_env(environ={}, env_file=None)
    expected = {
        "RATE_LIMIT_PAIRING_GENERATE": (10, 3600),
        "RATE_LIMIT_PAIRING_VERIFY_FAILURES": (5, 600),
        "RATE_LIMIT_REGISTRATION": (10, 3600),
        "RATE_LIMIT_WS_CONNECT": (5, 600),
        "RATE_LIMIT_WS_OPS": (1000, 60),
        "RATE_LIMIT_RELAY_SEND": (1000, 86400),
        "RATE_LIMIT_PHOTO_UPLOAD": (100, 86400),
        "RATE_LIMIT_PHOTO_GET": (500, 86400),
    }
    for name, (amount, window) in expected.items():
        item = defaults.rate_limit(name)
        assert item is not None and (item.amount, item.get_expiry()) == (amount, window), name
        env = {name: "7 per 2 minutes"}
        changed = Settings.from_env(environ=env, env_file=None).rate_limit(name)
        assert changed is not None and (changed.amount, changed.get_expiry()) == (7, 120)


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    proxy = (ipaddress.ip_network("127.0.0.1/32"),)
    s = await limited_settings(
        backend,
        tmp_path,
        request,
        trusted_proxies=proxy,
        **limits(RATE_LIMIT_REGISTRATION="2/minute"),
    )

    def via(ip: str) -> dict[str, str]:
        return {"X-Forwarded-For": f"6.6.6.6, {ip}"}

    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        for _ in range(2):
            assert (await register(client, DeviceKey(), headers=via("203.0.113.1"))).is_success
        assert (await register(client, DeviceKey(), headers=via("203.0.113.1"))).status_code == 429
        # Another client behind the same proxy has its own budget...
        assert (await register(client, DeviceKey(), headers=via("203.0.113.2"))).is_success
        # ...but one household's IPv6 /64 is one client.
        assert (await register(client, DeviceKey(), headers=via("2001:db8:5:6::1"))).is_success
        assert (await register(client, DeviceKey(), headers=via("2001:db8:5:6::2"))).is_success
        refused = await register(client, DeviceKey(), headers=via("2001:db8:5:6:ffff::3"))
        assert refused.status_code == 429


async def test_forwarded_for_from_an_untrusted_peer_buys_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await limited_settings(
        backend, tmp_path, request, **limits(RATE_LIMIT_REGISTRATION="2/minute")
    )
    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        statuses = [
            (
                await register(client, DeviceKey(), headers={"X-Forwarded-For": f"203.0.113.{i}"})
            ).status_code
            for i in range(4)
        ]
    assert statuses == [201, 201, 429, 429]


async def test_two_instances_share_one_counter(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await limited_settings(
        "production", tmp_path, request, **limits(RATE_LIMIT_REGISTRATION="3/minute")
    )
    async with (
        InProcessServer(s) as one,
        InProcessServer(s) as two,
        httpx.AsyncClient(base_url=one.url) as c1,
        httpx.AsyncClient(base_url=two.url) as c2,
    ):
        assert (await register(c1, DeviceKey())).status_code == 201
        assert (await register(c2, DeviceKey())).status_code == 201
        assert (await register(c1, DeviceKey())).status_code == 201
        assert (await register(c2, DeviceKey())).status_code == 429
        assert (await register(c1, DeviceKey())).status_code == 429


async def test_embedded_counts_in_memory_without_redis(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await limited_settings(
        "embedded", tmp_path, request, **limits(RATE_LIMIT_REGISTRATION="1/minute")
    )
    assert s.redis_url is None
    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        assert type(srv.infra.limiter._storage).__name__ == "MemoryWindows"
        assert (await register(client, DeviceKey())).status_code == 201
        assert (await register(client, DeviceKey())).status_code == 429


async def test_registration_fails_closed_when_the_limit_store_is_down(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with contextlib.ExitStack() as stack:
        private_redis = stack.enter_context(redis_server())
        s = await limited_settings("production", tmp_path, request, redis_url=private_redis)
        async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            assert (await register(client, DeviceKey())).status_code == 201
            stack.close()  # the limit store goes away while the server runs
            device = DeviceKey()
            started = time.monotonic()
            refused = await register(client, device)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert time.monotonic() - started < 5  # a down store answers fast
            assert await srv.infra.members.get(device.device_id) is None
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["error"]["details"]["backend"] == "redis"


async def test_failure_only_limits_and_device_keys(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The helpers pairing uses for failed verifies: check first (counts nothing),
    count only failures; a refusal is a 429 naming the limit and an audit event
    naming the verified device."""
    name = "RATE_LIMIT_PAIRING_VERIFY_FAILURES"
    s = await limited_settings(backend, tmp_path, request, **limits(**{name: "2 per 10 minutes"}))
    device = DeviceKey().device_id
    async with InProcessServer(s) as srv:
        infra = srv.infra
        for _ in range(3):  # checks alone never use the budget up
            verdict = await check_call(infra, name, device, fail_closed=True)
            assert verdict is not None and verdict.allowed
        for _ in range(2):
            await count_call(infra, name, device, fail_closed=True)
        verdict = await check_call(infra, name, device, fail_closed=True)
        assert verdict is not None and not verdict.allowed
        with pytest.raises(ApiError) as refused:
            enforce(verdict, name)
        err = refused.value
        assert (err.status, err.code, err.limit_name) == (429, "RATE_LIMIT_EXCEEDED", name)
        assert err.details["limit"] == 2 and err.details["window"] == 600
        assert err.headers["Retry-After"] == str(err.details["retry_after"])
        # Another device, and the same device on another limit, are unaffected.
        other = await check_call(infra, name, DeviceKey().device_id, fail_closed=True)
        assert other is not None and other.allowed
        assert (await count_call(infra, "RATE_LIMIT_RELAY_SEND", device, fail_closed=True)).allowed
        rows = await infra.db.fetch("SELECT * FROM audit_events WHERE event_type = 'rate_limit'")
        assert [(r["action"], r["device_id"]) for r in rows] == [
            ("pairing_verify_failures", device)
        ]


async def test_relay_traffic_fails_open_when_the_limit_store_is_down(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with contextlib.ExitStack() as stack:
        private_redis = stack.enter_context(redis_server())
        s = await limited_settings("production", tmp_path, request, redis_url=private_redis)
        async with InProcessServer(s) as srv:
            stack.close()
            device = DeviceKey().device_id
            assert (
                await count_call(srv.infra, "RATE_LIMIT_WS_OPS", device, fail_closed=False) is None
            )
            enforce(None, "RATE_LIMIT_WS_OPS")  # nothing to enforce: the op goes on
            with pytest.raises(ApiError) as down:
                await check_call(
                    srv.infra, "RATE_LIMIT_PAIRING_VERIFY_FAILURES", device, fail_closed=True
                )
            assert (down.value.status, down.value.code) == (503, "SERVICE_UNAVAILABLE")


async def test_every_limit_is_counted_apart_and_shared_by_instances(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each limit of docs/CONTRACT.md §6, set to 2 a minute by its variable, refuses the third call
    of one key, counts each limit and key apart, and (on Redis) is one counter for two
    instances."""
    names = list(RATE_LIMIT_DEFAULTS)
    s = await limited_settings(
        backend, tmp_path, request, **limits(**dict.fromkeys(names, "2/minute"))
    )
    device = DeviceKey().device_id
    # On the embedded default each server owns its data dir, and its limits are its own.
    s_two = s if backend == "production" else dataclasses.replace(s, data_dir=tmp_path / "two")
    async with InProcessServer(s) as one, InProcessServer(s_two) as two:
        second = two if backend == "production" else one  # memory is one process's
        for name in names:
            first_call = await count_call(one.infra, name, device, fail_closed=True)
            second_call = await count_call(second.infra, name, device, fail_closed=True)
            third_call = await count_call(one.infra, name, device, fail_closed=True)
            assert first_call is not None and first_call.allowed, name
            assert second_call is not None and second_call.allowed, name
            assert second_call.remaining == 0, name
            assert third_call is not None and not third_call.allowed, name
            with pytest.raises(ApiError) as refused:
                enforce(third_call, name)
            assert refused.value.details["limit"] == 2 and refused.value.details["window"] == 60
            other = await count_call(two.infra, name, DeviceKey().device_id, fail_closed=True)
            assert other is not None and other.allowed, name
