"""Every answer has the envelope and headers, bad input is a 4xx naming the field, and
nothing is ever a bare 500 or a stack trace (docs/CONTRACT.md §3)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra import devices_api
from infra.context import Capability, Infra
from infra.settings import Settings
from tests.support.keys import DeviceKey
from tests.support.services import InProcessServer


def envelope_error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert body["success"] is False
    assert set(body) == {"success", "error", "meta"}
    assert set(body["meta"]) == {"timestamp", "request_id"}
    assert response.headers["API-Version"] == "1.0"
    assert response.headers["X-Request-ID"] == body["meta"]["request_id"]
    error = body["error"]
    assert isinstance(error, dict)
    return error


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert envelope_error(missing)["code"] == "NOT_FOUND"
    wrong = await client.put("/api/v1/devices")
    assert wrong.status_code == 405
    assert envelope_error(wrong)["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"public_key": 12}', "public_key"),
        (b'{"public_key": "!!!"}', "public_key"),
        (b'{"public_key": "AAAA"}', "public_key"),
        (b"{}", "public_key"),
    ],
)
async def test_bad_registration_bodies_are_400_naming_the_field(
    client: httpx.AsyncClient, body: bytes, field: str
) -> None:
    device = DeviceKey()
    response = await client.post(
        "/api/v1/devices",
        content=body,
        headers={**device.auth(None), "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = envelope_error(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"] == {"field": field}


@pytest.mark.parametrize("book_id", ["short", "x" * 129, "has space in it 1234", "nul\x00" * 5, 7])
async def test_bad_book_ids_are_400(client: httpx.AsyncClient, book_id: object) -> None:
    device = DeviceKey()
    response = await client.post(
        "/api/v1/devices",
        json={"public_key": device.public_b64, "book_id": book_id},
        headers=device.auth(None),
    )
    assert response.status_code == 400
    assert envelope_error(response)["details"] == {"field": "book_id"}


async def test_oversized_body_is_413_before_auth(client: httpx.AsyncClient) -> None:
    big = b'{"public_key": "' + b"A" * (200 * 1024) + b'"}'
    response = await client.post("/api/v1/devices", content=big)
    assert response.status_code == 413
    assert envelope_error(response)["code"] == "PAYLOAD_TOO_LARGE"


async def test_oversized_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"A" * 8192

    response = await client.post("/api/v1/devices", content=chunks())
    assert response.status_code == 413


async def test_request_id_echoed_only_when_well_formed(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health", headers={"X-Request-ID": "abc.DEF-123_x"})
    assert echoed.headers["X-Request-ID"] == "abc.DEF-123_x"
    assert echoed.json()["meta"]["request_id"] == "abc.DEF-123_x"
    for bad in ("has space", "x" * 65, "<script>"):
        made = await client.get("/health", headers={"X-Request-ID": bad})
        assert made.headers["X-Request-ID"].startswith("req-")


async def test_query_limit_values_are_checked(client: httpx.AsyncClient) -> None:
    device = DeviceKey()
    book_id = str(uuid.uuid4())
    device.book_id = book_id
    await client.post(
        "/api/v1/devices",
        json={"public_key": device.public_b64, "book_id": book_id},
        headers=device.auth(),
    )
    bad = await client.get("/api/v1/audit?limit=abc", headers=device.auth())
    assert bad.status_code == 400
    clamped = await client.get("/api/v1/audit?limit=100000", headers=device.auth())
    assert clamped.status_code == 200


async def test_unhandled_error_is_a_500_envelope_without_trace(
    settings: Settings,
) -> None:
    def broken(infra: Infra) -> Capability:
        async def boom(request: Request) -> Response:
            raise RuntimeError("secret internals /home/x")

        return Capability("broken", [Route("/api/v1/boom", boom, methods=["GET"])])

    async with (
        InProcessServer(settings, capabilities=[devices_api.build, broken]) as srv,
        httpx.AsyncClient(base_url=srv.url) as c,
    ):
        response = await c.get("/api/v1/boom")
    assert response.status_code == 500
    error = envelope_error(response)
    assert error["code"] == "INTERNAL_ERROR"
    assert "secret" not in response.text and "Traceback" not in response.text


async def test_cors_only_for_allowed_origins(settings: Settings) -> None:
    allowed = "https://app.example.org"
    custom = Settings(**{**settings.__dict__, "allowed_origins": (allowed,)})
    async with InProcessServer(custom) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        ok = await c.get("/api/v1/nothing", headers={"Origin": allowed})
        assert ok.headers["Access-Control-Allow-Origin"] == allowed
        assert ok.headers["Vary"] == "Origin"
        assert "X-RateLimit-Remaining" in ok.headers["Access-Control-Expose-Headers"]
        other = await c.get("/health", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = await c.options(
            "/api/v1/devices", headers={"Origin": allowed, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
        assert preflight.headers["Access-Control-Max-Age"] == "600"
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


async def test_operational_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json()["data"]["status"] == "ok"
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'route="/health"' in metrics.text
    routes = set(re.findall(r'route="([^"]*)"', metrics.text))
    assert all(r == "unmatched" or r.startswith("/") for r in routes)
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", metrics.text)  # no raw book ids
    assert not re.search(r"[0-9a-f]{32}", metrics.text)  # no device ids
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    register = spec["paths"]["/api/v1/devices"]["post"]
    assert "requestBody" in register
    assert {"201", "400", "401", "409", "413", "429"} <= set(register["responses"])
