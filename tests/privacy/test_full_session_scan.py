"""The zero-knowledge claim, checked end to end on the production backends: a whole
session runs against PostgreSQL, Redis and the S3 server behind a trusted proxy, then
everything at rest (a pg_dump, every Redis key and value, every object key) and
everything emitted (every log line, every Sentry envelope) is searched for the raw
book_id, the tokens, the client's addresses, the erased devices' keys and canaries.

Each capability extends `drive_session` with its own steps (pairing, relay ops with
canary payloads, photos) as it lands; the scan below stays the same.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx
import pytest

from infra.app import default_capabilities
from tests.conftest import make_settings, reset_production
from tests.privacy.support import (
    add_public_keys,
    assert_clean,
    boom_capability,
    captured_logs,
    captured_sentry,
    drive_session,
    pg_dump,
    redis_dump,
    s3_object_keys,
)
from tests.support.services import InProcessServer

CLIENT_V4 = "203.0.113.77"
CLIENT_V6 = "2001:db8:cafe:beef::77"


@pytest.mark.parametrize("client_ip", [CLIENT_V4, CLIENT_V6])
async def test_nothing_secret_at_rest_or_emitted(
    client_ip: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = make_settings(
        "production",
        tmp_path,
        request,
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    await reset_production(s)
    assert s.database_url and s.redis_url and s.s3_endpoint_url
    with captured_logs() as logs, captured_sentry() as sentry:
        async with (
            InProcessServer(s, capabilities=[*default_capabilities(), boom_capability]) as srv,
            httpx.AsyncClient(base_url=srv.url) as client,
        ):
            session = await drive_session(client, srv.infra, forwarded_for=client_ip)
            book_ref = srv.infra.hasher.book_ref(session.book_id)
            at_rest = {
                "pg_dump": pg_dump(s.database_url),
                "redis": await redis_dump(s.redis_url),
                "object keys": "\n".join(await s3_object_keys(s.s3_endpoint_url)),
            }
    emitted = {"the log": logs.getvalue(), "sentry": sentry.text()}

    secrets = session.secrets
    addr = ipaddress.ip_address(client_ip)
    secrets.add("client address", client_ip)
    secrets.add("client address, exploded", addr.exploded)
    prefix = client_ip.rsplit(".", 1)[0] + "." if addr.version == 4 else "2001:db8:cafe"
    secrets.add("client network", prefix)
    add_public_keys(secrets, session.erased)

    # The scan looked at real data: the session left its traces, hashed.
    assert sentry.events(), "the unhandled error reached no Sentry transport"
    assert "audit_events" in at_rest["pg_dump"] and book_ref in at_rest["pg_dump"]
    assert "LIMITS" in at_rest["redis"]  # the registration counters, keyed by hash
    assert session.revoked.device_id in at_rest["pg_dump"]

    for where, text in {**at_rest, **emitted}.items():
        assert_clean(where, text, secrets)
    # The revoked key is kept (it may never register again); the erased ones are not.
    assert session.revoked.public_b64 in at_rest["pg_dump"]
    # Of the book, only the erasure event remains, and it names the book by hash alone.
    # The one other trace allowed: the sweeper's second pass over the erased book's
    # folder, due once the last upload URL has expired (a late PUT leaves nothing).
    dump, pending = split_copy(at_rest["pg_dump"], "blob_deletions")
    assert dump.count(book_ref) == 1
    assert all(row.split("\t")[1].startswith(("photos/", "snapshots/")) for row in pending)
    assert book_ref not in at_rest["redis"] and book_ref not in at_rest["object keys"]
    assert "book\terase\tsuccess" in at_rest["pg_dump"]
    # Logs and Sentry carry neither the loopback peer nor any raw address.
    for where, text in emitted.items():
        assert "127.0.0.1" not in text, where


def split_copy(dump: str, table: str) -> tuple[str, list[str]]:
    """The dump without one table's COPY rows, and those rows."""
    head, sep, rest = dump.partition(f"COPY public.{table} ")
    if not sep:
        return dump, []
    block, _, tail = rest.partition("\n\\.\n")
    rows = [r for r in block.split("\n")[1:] if r]
    return head + tail, rows
