"""Logs and Sentry leak nothing (docs/CONTRACT.md §7): every log line of a whole HTTP session, and
the events Sentry would receive for an error inside a handler, hold no raw book_id,
token, IP address, public key, header, cookie, body or local variable."""

from __future__ import annotations

import io
import logging
import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.datastructures import Secret

from infra.app import default_capabilities
from infra.ids import IdHasher
from infra.logs import JsonFormatter, RedactingFilter
from tests.conftest import fresh_settings, make_settings
from tests.privacy.support import (
    add_public_keys,
    assert_clean,
    boom_capability,
    captured_logs,
    captured_sentry,
    drive_session,
    new_book_id,
    register,
)
from tests.support.keys import DeviceKey
from tests.support.relay import make_book, open_peer
from tests.support.services import ID_HASH_KEY, InProcessServer, ServerProcess, free_port

TOKEN = DeviceKey().token("3f1c2a9e-7b4d-4e8f-9a1b-2c3d4e5f6a7b")
BOOK_ID = "3f1c2a9e-7b4d-4e8f-9a1b-2c3d4e5f6a7b"


def format_one(msg: str, *args: Any, **extra: Any) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"bad {TOKEN} from 203.0.113.9")
        except ValueError:
            logger.error(msg, *args, extra=extra, exc_info=True)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("token %s", (TOKEN,)),
        ("Authorization: Bearer %s", ("opaque-secret-value",)),
        ("subprotocols relay.v1, bearer.%s", (TOKEN,)),
        ('%s - "WebSocket /ws/relay/%s?since=3" [accepted]', ("203.0.113.9:5000", BOOK_ID)),
        ("GET /api/v1/books/%s/devices from %s", ("my-family-book-0001", "2001:db8:1:2::7")),
        ("peer %s", ("::ffff:203.0.113.9",)),
        ("book %s", (BOOK_ID,)),
        ("key %s", ("q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=",)),
        ("db %s", ("postgresql://user:hunter2@db.internal/hp",)),
    ],
)
def test_filter_masks_secrets_in_messages(msg: str, args: tuple[Any, ...]) -> None:
    line = format_one(msg, *args)
    for secret in (
        TOKEN, BOOK_ID, "my-family-book-0001", "opaque-secret-value", "203.0.113.9",
        "2001:db8:1:2", "q83vEjRWeJq83vEjRWeJ", "hunter2", "since=3",
    ):  # fmt: skip
        assert secret not in line, (secret, line)
    record = orjson.loads(line)
    assert record["level"] == "error" and record["error"] == "ValueError (details withheld)"


def test_filter_drops_sensitive_fields_and_masks_nested_ones() -> None:
    line = format_one(
        "request",
        book_id=BOOK_ID,
        authorization="Bearer x",
        headers={"cookie": "sid=1"},
        details={"peer": "203.0.113.9", "payload": "c2VjcmV0"},
        route="/api/v1/books/{book_id}",
    )
    record = orjson.loads(line)
    assert record["book_id"] == record["authorization"] == record["headers"] == "[redacted]"
    assert record["details"] == {"peer": "[ip]", "payload": "[redacted]"}
    assert record["route"] == "/api/v1/books/{book_id}"


async def test_no_log_line_of_a_whole_session_leaks(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await fresh_settings(backend, tmp_path, request)
    with captured_logs() as stream:
        async with (
            InProcessServer(s, capabilities=[*default_capabilities(), boom_capability]) as srv,
            httpx.AsyncClient(base_url=srv.url) as client,
        ):
            session = await drive_session(client, srv.infra)
    text = stream.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    # The scan saw the session: requests, refusals, the 500 and the audit trail.
    assert any(r.get("msg") == "unhandled error" for r in lines)
    assert {r.get("status") for r in lines} >= {200, 201, 204, 400, 401, 403, 404, 405, 500}
    assert any(r.get("msg") == "audit" and r.get("event_type") == "book" for r in lines)
    secrets = session.secrets
    add_public_keys(secrets, [*session.erased, session.revoked])
    secrets.add("client address", "127.0.0.1")
    assert_clean("the log", text, secrets)
    assert "Bearer ey" not in text and "authorization" not in text.lower().replace(
        '"authorization": "[redacted]"', ""
    )
    # Routes are named by template, never by path.
    routes = {r["route"] for r in lines if "route" in r}
    assert "/api/v1/books/{book_id}/devices" in routes
    assert all("{" in r or r in ("unmatched", "/api/v1/devices", "/api/v1/audit") for r in routes)


async def test_sentry_gets_no_header_body_cookie_local_path_or_token(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = await fresh_settings("embedded", tmp_path, request)
    device = DeviceKey()
    book_id = BOOK_ID
    token = device.token(book_id)
    with captured_sentry() as transport:
        async with (
            InProcessServer(s, capabilities=[*default_capabilities(), boom_capability]) as srv,
            httpx.AsyncClient(base_url=srv.url) as client,
        ):
            response = await client.post(
                f"/api/v1/books/{book_id}/boom?token={token}",
                content=b"canary-body-bytes",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Cookie": "sid=canary-cookie",
                    "X-Secret-Header": "canary-header",
                },
            )
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "INTERNAL_ERROR"
    events = transport.events()
    errors = [e for e in events if e.get("exception")]
    assert errors, f"no error event reached the transport: {events}"
    text = transport.text()
    for secret in (
        book_id, token, token.rsplit(".", 1)[-1], "canary-body-bytes", "canary-cookie",
        "canary-header", "127.0.0.1", "Bearer",
    ):  # fmt: skip
        assert secret not in text, secret
    for event in events:
        request_part = event.get("request")
        if request_part is not None:
            assert set(request_part) <= {"method", "url"}
            assert request_part["url"] == "/api/v1/books/{book_id}/boom"
        assert "user" not in event and "breadcrumbs" not in event
        for exc in (event.get("exception") or {}).get("values", []):
            assert exc["value"] == "(details withheld)"
            for frame in exc["stacktrace"]["frames"]:
                assert "vars" not in frame
                assert not {"pre_context", "context_line", "post_context"} & set(frame)
    (error,) = errors[:1]
    (exc,) = error["exception"]["values"]
    assert exc["type"] == "RuntimeError"
    assert any(f.get("function") == "explode" for f in exc["stacktrace"]["frames"])
    assert error["transaction"] == "/api/v1/books/{book_id}/boom"


def test_a_library_with_its_own_handler_is_redacted_too() -> None:
    stream = io.StringIO()
    library = logging.getLogger("some.library")
    own = logging.StreamHandler(stream)
    library.addHandler(own)
    library.propagate = False
    try:
        with captured_logs():
            library.warning("token %s for %s", TOKEN, BOOK_ID)
    finally:
        library.removeHandler(own)
        library.propagate = True
    written = stream.getvalue()
    assert "[token]" in written and TOKEN not in written and BOOK_ID not in written


async def test_a_real_server_process_writes_only_clean_json_lines(tmp_path: Path) -> None:
    """`homepocket-relay serve` itself, start to SIGTERM: every line on its stdout and
    stderr is a JSON object, and none holds a secret of the calls it served."""
    env = {
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "S3_BUCKET": "",
        "SENTRY_DSN": "",
        "LOG_LEVEL": "DEBUG",
        "TRUSTED_PROXIES": "127.0.0.1",
    }
    server = ServerProcess(env, tmp_path / "data").start()
    try:
        device, other = DeviceKey(), DeviceKey()
        book_id = new_book_id()
        via = {"X-Forwarded-For": "198.51.100.23"}
        async with httpx.AsyncClient(base_url=server.url, headers=via) as client:
            assert (await register(client, device, book_id)).status_code == 201
            forged = other.token(book_id, sub=device.device_id)
            bad = await client.get(
                f"/api/v1/books/{book_id}/devices", headers={"Authorization": f"Bearer {forged}"}
            )
            assert bad.status_code == 401
            assert (await client.get(f"/api/v1/nope/{book_id}")).status_code == 404
            erase = await client.delete(f"/api/v1/books/{book_id}", headers=device.auth())
            assert erase.status_code == 204
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    text = server.log()
    records = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    audit = [r for r in records if r.get("msg") == "audit"]
    assert audit and all(r["device_id"] is None or len(r["device_id"]) == 32 for r in audit)
    # Hashed ids stay readable in the log, so an operator can follow one book.
    hasher = IdHasher((tmp_path / "data" / "id_hash_key").read_text().strip())
    assert any(r.get("book_ref") == hasher.book_ref(book_id) for r in audit)
    assert any(r.get("logger", "").startswith("uvicorn") for r in records)
    # DEBUG is for our own code: libraries that print SQL parameters, frames or signed
    # requests at DEBUG stay at INFO.
    chatty = {r["logger"] for r in records if r["level"] == "debug"}
    assert not {name for name in chatty if not name.startswith("homepocket")}, chatty
    for secret in (book_id, forged, "198.51.100.23", "127.0.0.1", device.public_b64):
        assert secret not in text, secret


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_socket_lines_only_at_debug_and_scrubbed(
    tmp_path: Path, request: pytest.FixtureRequest, level: str
) -> None:
    """uvicorn's line for each accepted socket is an access-log line: none at INFO (a
    reconnect storm would write thousands), at DEBUG scrubbed; the `websockets`
    library's own per-connection lines never."""
    env = {"ID_HASH_KEY": ID_HASH_KEY, "RATE_LIMIT_WS_CONNECT": "off", "LOG_LEVEL": level}
    server = ServerProcess(env, tmp_path / "data", port=free_port()).start()
    settings = make_settings("embedded", tmp_path, request, id_hash_key=Secret(ID_HASH_KEY))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            book_id, (device,) = await make_book(http, settings, 1)
            peer = await open_peer(server.ws_url, book_id, device, since=0)
            await peer.ws.close()
    finally:
        server.stop()
    text = server.log()
    socket_lines = [line for line in text.splitlines() if "WebSocket" in line]
    assert "connection open" not in text and "connection closed" not in text
    if level == "INFO":
        assert socket_lines == []
    else:
        assert len(socket_lines) == 1 and "[accepted]" in socket_lines[0]
        assert "/ws/relay/{book_id}?[query]" in socket_lines[0]
        assert book_id not in text and "127.0.0.1" not in text
