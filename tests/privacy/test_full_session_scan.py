"""The zero-knowledge claim, checked end to end on the production backends: a whole
session runs against PostgreSQL, Redis and the S3 server behind a trusted proxy, then
everything at rest (a pg_dump, every Redis key and value, every object key) and
everything emitted (every log line, every Sentry envelope) is searched for the raw
book_id, the tokens, the client's addresses, the erased devices' keys and canaries.

The session (`drive_session`): register, pair through docs/CONTRACT.md §5 (the SAS, the confirm, the
book key boxed from one phone to the other), relay ops over the socket and over HTTP
whose canary plaintexts are encrypted on the client, an encrypted photo through its
presigned URL, a revoke, a pairing left pending. It is scanned once while the book
lives (the raw book_id allowed only inside a live pairing session's value; the
ciphertexts found exactly as the clients encrypted them, never their plaintext; no
short code in any key), then erased and scanned again: nothing of the book is left.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import httpx
import pytest

from infra.app import default_capabilities
from infra.settings import Settings
from tests.conftest import make_settings, reset_production
from tests.privacy.support import (
    Secrets,
    Session,
    add_public_keys,
    assert_clean,
    boom_capability,
    captured_logs,
    captured_sentry,
    drive_session,
    erase_book,
    pg_dump,
    redis_dump,
    s3_objects,
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
            httpx.AsyncClient(base_url=srv.url, timeout=15) as client,
        ):
            session = await drive_session(
                client, srv.infra, forwarded_for=client_ip, ws_url=srv.ws_url, erase=False
            )
            book_ref = srv.infra.hasher.book_ref(session.book_id)
            alive = await everything_at_rest(s)
            await erase_book(client, session)
            at_rest = await everything_at_rest(s)
    emitted = {"the log": logs.getvalue(), "sentry": sentry.text()}

    secrets = session.secrets
    addr = ipaddress.ip_address(client_ip)
    secrets.add("client address", client_ip)
    secrets.add("client address, exploded", addr.exploded)
    prefix = client_ip.rsplit(".", 1)[0] + "." if addr.version == 4 else "2001:db8:cafe"
    secrets.add("client network", prefix)

    # The scan looked at real data: the session left its traces, hashed.
    assert sentry.events(), "the unhandled error reached no Sentry transport"
    assert "audit_events" in at_rest["pg_dump"] and book_ref in at_rest["pg_dump"]
    assert "LIMITS" in at_rest["redis"]  # the registration counters, keyed by hash
    assert session.revoked.device_id in at_rest["pg_dump"]
    assert "pairing\tconfirm\tconfirmed" in alive["pg_dump"]

    scan_the_live_book(alive, session, book_ref)
    for where, text in emitted.items():
        assert_clean(where, text, secrets)

    # After the erasure: nothing of the book, not even its ciphertexts or its members' keys.
    add_public_keys(secrets, session.erased)
    for label, ciphertext in session.ciphertexts.items():
        secrets.add("ciphertext of the " + label, ciphertext)
    for where, text in at_rest.items():
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
    assert not at_rest["object bodies"]
    assert "hp:pair:" not in at_rest["redis"]  # no session, code or index of the book
    assert "book\terase\tsuccess" in at_rest["pg_dump"]
    # Logs and Sentry carry neither the loopback peer nor any raw address.
    for where, text in emitted.items():
        assert "127.0.0.1" not in text, where


async def everything_at_rest(s: Settings) -> dict[str, str]:
    assert s.database_url and s.redis_url and s.s3_endpoint_url
    objects = await s3_objects(s.s3_endpoint_url)
    return {
        "pg_dump": pg_dump(s.database_url),
        "redis": await redis_dump(s.redis_url),
        "object keys": "\n".join(objects),
        # Bodies read as bytes one to one, so a plaintext canary cannot hide in them.
        "object bodies": "\n".join(body.decode("latin-1") for body in objects.values()),
    }


def scan_the_live_book(alive: dict[str, str], session: Session, book_ref: str) -> None:
    """While the book lives: its ciphertexts are kept exactly as sent, their plaintexts
    nowhere; the raw book_id only in a live pairing session's value; no short code in
    any key."""
    secrets = session.secrets
    without_book_id = Secrets({k: v for k, v in secrets.items.items() if k != "raw book_id"})
    sessions = {repr(("hp:pair:s:" + pid).encode()) for pid in session.live_pairings}
    holding = []
    for line in alive["redis"].split("\n"):
        key = line.split(" ", 1)[0]
        assert_clean(f"redis key {key}", line, without_book_id)
        if session.book_id in line:
            holding.append(key)
    assert holding and set(holding) <= sessions, holding
    for where, text in alive.items():
        assert_clean(where, text, without_book_id if where == "redis" else secrets)
    for label, ciphertext in session.ciphertexts.items():
        if label == "photo":
            assert bytes.fromhex(ciphertext).decode("latin-1") in alive["object bodies"]
        else:
            assert ciphertext in alive["redis"], f"the {label} was not kept as sent"
    assert f"photos/{book_ref}/" in alive["object keys"]
    keys = [line.split(" ", 1)[0] for line in alive["redis"].split("\n")]
    keys += alive["object keys"].split("\n")
    assert len(session.short_codes) == 2
    for code in session.short_codes:
        pattern = re.compile(rf"(?<![0-9A-Za-z]){code}(?![0-9A-Za-z])")
        assert not [k for k in keys if pattern.search(k)], "a short code in a key"


def split_copy(dump: str, table: str) -> tuple[str, list[str]]:
    """The dump without one table's COPY rows, and those rows."""
    head, sep, rest = dump.partition(f"COPY public.{table} ")
    if not sep:
        return dump, []
    block, _, tail = rest.partition("\n\\.\n")
    rows = [r for r in block.split("\n")[1:] if r]
    return head + tail, rows
