"""What the privacy tests share: devices in books, captured logs and Sentry events, and
a scanner that looks for secrets in everything the server kept or emitted."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from infra.logs import setup_logging
from infra.members import MEMBER
from tests.support.keys import DeviceKey

SENTRY_TEST_DSN = "http://public@127.0.0.1:9/1"


def new_book_id() -> str:
    return str(uuid.uuid4())


async def register(
    client: httpx.AsyncClient,
    device: DeviceKey,
    book_id: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"public_key": device.public_b64, **extra}
    if book_id is not None:
        body["book_id"] = book_id
        device.book_id = book_id
    return await client.post(
        "/api/v1/devices", json=body, headers={**device.auth(book_id), **(headers or {})}
    )


async def join_book(client: httpx.AsyncClient, infra: Any, device: DeviceKey, book_id: str) -> None:
    """Register a device and make it a member, as pairing would (verify, then confirm)."""
    response = await register(client, device)
    assert response.status_code == 201, response.text
    book_ref = infra.hasher.book_ref(book_id)
    assert await infra.members.add_pending(device.device_id, book_ref, 20)
    assert await infra.members.promote(device.device_id, book_ref)
    device.book_id = book_id
    assert (await infra.members.get(device.device_id)).role == MEMBER


@contextlib.contextmanager
def captured_logs(level: str = "DEBUG") -> Iterator[io.StringIO]:
    """Every log line the process writes, through the server's own logging setup."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    access = logging.getLogger("uvicorn.access")
    saved_access = access.disabled
    stream = io.StringIO()
    handler = setup_logging(level, stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for old in saved_handlers:
            root.addHandler(old)
        root.setLevel(saved_level)
        access.disabled = saved_access


class CaptureTransport(Transport):
    """A Sentry transport that keeps envelopes instead of sending them."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for envelope in self.envelopes:
            for item in envelope.items:
                if item.type == "event" and item.payload.json is not None:
                    out.append(item.payload.json)
        return out

    def text(self) -> str:
        return "\n".join(e.serialize().decode("utf-8", "replace") for e in self.envelopes)


@contextlib.contextmanager
def captured_sentry() -> Iterator[CaptureTransport]:
    from infra.sentry import setup_sentry

    transport = CaptureTransport()
    setup_sentry(SENTRY_TEST_DSN, transport=transport)
    try:
        yield transport
    finally:
        sentry_sdk.flush(2)
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # no DSN: reporting off for the tests that follow


@dataclass
class Secrets:
    """What must never appear at rest or in anything emitted, with a label for each."""

    items: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, value: str) -> None:
        assert value, label
        self.items[label] = value

    def add_token(self, label: str, token: str) -> None:
        self.add(label, token)
        self.add(label + " signature", token.rsplit(".", 1)[-1])

    def found_in(self, text: str) -> list[str]:
        return [label for label, value in self.items.items() if value in text]


def assert_clean(where: str, text: str, secrets: Secrets) -> None:
    leaked = secrets.found_in(text)
    assert not leaked, f"{where} holds {leaked}"


def pg_dump(database_url: str) -> str:
    result = subprocess.run(
        ["pg_dump", "--no-owner", "--no-privileges", database_url],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return result.stdout.decode("utf-8", "replace")


async def redis_dump(redis_url: str) -> str:
    """Every key and every value, whatever its type."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    lines: list[str] = []
    try:
        async for key in client.scan_iter(count=500):
            kind = (await client.type(key)).decode()
            value: Iterable[Any]
            if kind == "string":
                value = [await client.get(key)]
            elif kind == "list":
                value = await client.lrange(key, 0, -1)
            elif kind == "hash":
                value = [x for kv in (await client.hgetall(key)).items() for x in kv]
            elif kind == "set":
                value = await client.smembers(key)
            elif kind == "zset":
                value = [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                value = [str(e) for e in await client.xrange(key)]
            else:
                value = [kind]
            lines.append(repr(key) + " " + " ".join(repr(v) for v in value))
    finally:
        await client.aclose()
    return "\n".join(lines)


async def s3_object_keys(endpoint: str) -> list[str]:
    """Every object key in every bucket of the S3 server."""
    import aioboto3

    session = aioboto3.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    keys: list[str] = []
    async with session.client("s3", endpoint_url=endpoint) as s3:
        for bucket in (await s3.list_buckets()).get("Buckets", []):
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket["Name"]):
                keys.extend(bucket["Name"] + "/" + o["Key"] for o in page.get("Contents", []))
    return keys


@dataclass
class TracedKey(DeviceKey):
    """A device key that remembers every token it signed, so a scan can look for them."""

    issued: list[str] = field(default_factory=list)

    def token(self, *args: Any, **kw: Any) -> str:
        token = super().token(*args, **kw)
        self.issued.append(token)
        return token


def boom_capability(infra: Any) -> Any:
    """A test-only route that fails inside a handler holding every kind of secret."""
    from starlette.requests import Request
    from starlette.routing import Route

    from infra.context import Capability

    async def explode(request: Request) -> Any:
        book_id = request.path_params["book_id"]
        authorization = request.headers.get("authorization")
        body = await request.body()
        peer = request.client
        raise RuntimeError(f"failed for {book_id} {authorization} {body!r} {peer}")

    return Capability("boom", [Route("/api/v1/books/{book_id}/boom", explode, methods=["POST"])])


@dataclass
class Session:
    """What a full session made: the secrets to look for, and who is left."""

    secrets: Secrets
    book_id: str
    erased: list[TracedKey]
    revoked: TracedKey
    canary: str


async def drive_session(
    client: httpx.AsyncClient, infra: Any, forwarded_for: str | None = None
) -> Session:
    """Register, list, revoke, refusals of every kind, a 500, the audit, erase."""
    from tests.support.keys import hs256_with_public_key, unsigned

    via = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    canary = "canary" + uuid.uuid4().hex
    first, second, lost, stranger = TracedKey(), TracedKey(), TracedKey(), TracedKey()
    book_id = new_book_id()
    base = f"/api/v1/books/{book_id}"

    created = await register(
        client,
        first,
        book_id,
        headers={**via, "Cookie": f"sid={canary}-cookie", "User-Agent": "pocket/1.0"},
        note=canary + "-body",
    )
    assert created.status_code == 201, created.text
    for device in (second, lost):
        assert (await register(client, device, headers=via)).status_code == 201
        ref = infra.hasher.book_ref(book_id)
        assert await infra.members.add_pending(device.device_id, ref, 20)
        assert await infra.members.promote(device.device_id, ref)
        device.book_id = book_id
    assert (await client.get(base + "/devices", headers={**via, **first.auth()})).is_success
    revoke = await client.delete(f"{base}/devices/{lost.device_id}", headers=second.auth())
    assert revoke.status_code == 204

    refusals: list[tuple[int, dict[str, str]]] = [
        (401, {"Authorization": f"Bearer {unsigned(first)}"}),
        (401, {"Authorization": f"Bearer {hs256_with_public_key(first)}"}),
        (401, first.auth(exp=1_000_000_000, iat=999_999_000)),
        (401, {"Authorization": "Bearer " + stranger.token(book_id, sub=first.device_id)}),
        (401, {"Authorization": f"Bearer {canary}-garbage"}),
        (401, {}),
        (403, lost.auth()),
    ]
    for status, headers in refusals:
        response = await client.get(base + "/devices", headers={**via, **headers})
        assert response.status_code == status, (status, response.text)
    assert (await register(client, stranger, new_book_id())).status_code == 201
    wrong = await client.get(base + "/devices", headers=stranger.auth(book_id))
    assert wrong.status_code == 403
    missing = await client.get(
        f"/api/v1/nowhere/{book_id}/{canary}-path?token={first.token()}", headers=first.auth()
    )
    assert missing.status_code == 404
    assert (await client.put("/api/v1/devices", headers=first.auth())).status_code == 405
    malformed = await client.post(
        "/api/v1/devices", content=b'{"public_key": "' + canary.encode(), headers=first.auth()
    )
    assert malformed.status_code == 400
    boom = await client.post(base + "/boom", content=canary + "-boom", headers=first.auth())
    assert boom.status_code in (404, 500)  # 500 where the test route is installed
    audit = await client.get("/api/v1/audit", headers=first.auth())
    assert audit.status_code == 200
    erased = await client.delete(base, headers={**via, **first.auth()})
    assert erased.status_code == 204
    stale = await client.get(base + "/devices", headers=second.auth())
    assert stale.status_code == 401

    secrets = Secrets()
    secrets.add("raw book_id", book_id)
    secrets.add("canary", canary)
    for name, device in (("first", first), ("second", second), ("lost", lost), ("x", stranger)):
        for i, token in enumerate(device.issued):
            secrets.add_token(f"{name} token {i}", token)
    return Session(secrets, book_id, [first, second], lost, canary)


def add_public_keys(secrets: Secrets, devices: Iterable[DeviceKey]) -> None:
    for i, device in enumerate(devices):
        secrets.add(f"public key {i}", device.public_b64)
        secrets.add(
            f"public key {i} (urlsafe)", device.public_b64.replace("+", "-").replace("/", "_")
        )
