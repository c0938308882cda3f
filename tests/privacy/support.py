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
    first: TracedKey | None = None
    second: TracedKey | None = None
    via: dict[str, str] = field(default_factory=dict)
    # What the clients encrypted: the server must hold these bytes exactly, and never
    # their plaintext (which is in `secrets`).
    ciphertexts: dict[str, str] = field(default_factory=dict)
    short_codes: list[str] = field(default_factory=list)
    live_pairings: list[str] = field(default_factory=list)


async def drive_session(
    client: httpx.AsyncClient,
    infra: Any,
    forwarded_for: str | None = None,
    ws_url: str | None = None,
    erase: bool = True,
) -> Session:
    """Register, list, revoke, refusals of every kind, a 500, the audit, erase. With
    `ws_url`: also pairing, relay ops and photos (`more_of_the_session`); with `erase`
    off, the book is left for the caller to scan, then `erase_book`."""
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

    secrets = Secrets()
    session = Session(secrets, book_id, [first, second], lost, canary, first, second, via)
    if ws_url is not None:
        await more_of_the_session(client, ws_url, session)
    if erase:
        await erase_book(client, session)
    secrets.add("raw book_id", book_id)
    secrets.add("canary", canary)
    for name, device in (("first", first), ("second", second), ("lost", lost), ("x", stranger)):
        add_tokens(secrets, name, device)
    return session


def add_tokens(secrets: Secrets, name: str, device: TracedKey) -> None:
    for i, token in enumerate(device.issued):
        secrets.add_token(f"{name} token {i}", token)


async def erase_book(client: httpx.AsyncClient, session: Session) -> None:
    first, second = session.first, session.second
    assert first is not None and second is not None
    base = f"/api/v1/books/{session.book_id}"
    erased = await client.delete(base, headers={**session.via, **first.auth()})
    assert erased.status_code == 204
    stale = await client.get(base + "/devices", headers=second.auth())
    assert stale.status_code == 401
    for device in session.erased:  # tokens signed since the session was driven
        add_tokens(session.secrets, device.device_id[:8], device)


def add_public_keys(secrets: Secrets, devices: Iterable[DeviceKey]) -> None:
    for i, device in enumerate(devices):
        secrets.add(f"public key {i}", device.public_b64)
        secrets.add(
            f"public key {i} (urlsafe)", device.public_b64.replace("+", "-").replace("/", "_")
        )


def encrypt(book_key: bytes, plaintext: str) -> bytes:
    """What a client does before anything leaves the phone."""
    from nacl.secret import SecretBox

    return bytes(SecretBox(book_key).encrypt(plaintext.encode()))


def decrypt(book_key: bytes, ciphertext: bytes) -> str:
    from nacl.secret import SecretBox

    return SecretBox(book_key).decrypt(ciphertext).decode()


async def more_of_the_session(client: httpx.AsyncClient, ws_url: str, session: Session) -> None:
    """A newcomer pairs through docs/CONTRACT.md §5 (SAS, confirm, the book key boxed to it); ops
    encrypted under that key go through the socket and `relay/send`; a photo goes
    through its presigned URL; a second newcomer is left pending in a live session."""
    import base64

    from tests.support.relay import open_peer

    first, via, secrets = session.first, session.via, session.secrets
    assert first is not None
    book_key = uuid.uuid4().bytes + uuid.uuid4().bytes
    secrets.add("book key", base64.b64encode(book_key).decode())
    joiner = TracedKey()
    assert (await register(client, joiner, headers=via)).status_code == 201
    pairing_id = await pair(client, first, joiner, session, book_key)
    session.erased.append(joiner)
    session.live_pairings.append(pairing_id)  # confirmed, and alive for its 10 minutes

    peers = [
        await open_peer(ws_url, session.book_id, d, token=d.token(), headers=via)
        for d in (first, joiner)
    ]
    for peer in peers:
        await peer.recv_type("sync_complete")
    sent: list[str] = []
    to_first: list[str] = []
    for i, label in enumerate(("socket op", "relay/send op", "ciphertext-only op")):
        plain = f"canary-{label.replace(' ', '-')}-{uuid.uuid4().hex}"
        secrets.add(f"plaintext of the {label}", plain)
        payload = base64.b64encode(encrypt(book_key, plain)).decode()
        session.ciphertexts[label] = payload
        if label == "relay/send op":
            body = {"book_id": session.book_id, "payload": payload, "timestamp": 1_700_000_000}
            response = await client.post(
                "/api/v1/relay/send", json=body, headers={**via, **joiner.auth()}
            )
            assert response.status_code == 202, response.text
        else:
            await peers[0].op(payload, id=f"op-{i}")
            while (reply := await peers[0].recv_type("ack", "crdt_operation"))["type"] != "ack":
                to_first.append(reply["payload"])
            assert reply["seq"] == i + 1
        sent.append(payload)
    # Forwarded exactly as encrypted (an op sent over HTTP reaches every socket), and
    # only the book key opens them.
    got = [(await peers[1].recv_type("crdt_operation"))["payload"] for _ in range(3)]
    assert got == sent
    if not to_first:
        to_first.append((await peers[0].recv_type("crdt_operation"))["payload"])
    assert to_first == [sent[1]]
    assert decrypt(book_key, base64.b64decode(got[2])).startswith("canary-ciphertext-only")
    listed = await client.get(
        f"/api/v1/books/{session.book_id}/ops", headers={**via, **first.auth()}
    )
    assert [op["payload"] for op in listed.json()["data"]["ops"]] == sent
    for peer in peers:
        await peer.close()

    await photo_round_trip(client, first, session, book_key)

    late = TracedKey()
    assert (await register(client, late, headers=via)).status_code == 201
    generated = await client.post(
        "/api/v1/pairing/generate",
        json={"book_id": session.book_id},
        headers={**via, **first.auth()},
    )
    code = generated.json()["data"]["short_code"]
    session.short_codes.append(code)
    verified = await client.post(
        "/api/v1/pairing/verify",
        json={"short_code": code, "public_key": late.public_b64},
        headers={**via, **late.auth(None)},
    )
    assert verified.status_code == 200, verified.text
    session.live_pairings.append(verified.json()["data"]["pairing_id"])
    session.erased.append(late)
    add_tokens(secrets, "joiner", joiner)
    add_tokens(secrets, "late", late)


async def pair(
    client: httpx.AsyncClient, g: TracedKey, j: TracedKey, session: Session, book_key: bytes
) -> str:
    """docs/CONTRACT.md §5 between G and J, through the server: code, commit, nonce, reveal, SAS,
    confirm, the book key in a box from G to J. Returns the pairing_id."""
    import base64

    from pairing import sas
    from tests.support.pairing import seed_of

    via = session.via

    async def call(path: str, device: TracedKey, body: dict[str, Any]) -> dict[str, Any]:
        book = ... if device is g else None
        response = await client.post(
            f"/api/v1/pairing/{path}", json=body, headers={**via, **device.auth(book)}
        )
        assert response.status_code in (200, 201), response.text
        return dict(response.json()["data"])

    async def exchange(device: TracedKey, pid: str, payload: bytes | None = None) -> Any:
        body: dict[str, Any] = {"pairing_id": pid}
        if payload is not None:
            body["payload"] = base64.b64encode(payload).decode()
        return await call("exchange", device, body)

    generated = await call("generate", g, {"book_id": session.book_id})
    session.short_codes.append(generated["short_code"])
    pid = generated["pairing_id"]
    verified = await call(
        "verify", j, {"short_code": generated["short_code"], "public_key": j.public_b64}
    )
    assert verified["book_id"] == session.book_id
    pk_g, pk_j = g.public_raw, j.public_raw
    n_g, n_j = sas.new_nonce(), sas.new_nonce()
    await exchange(g, pid, sas.commit_message(pk_g, n_g))
    seen = await exchange(j, pid, sas.nonce_message(n_j))
    _, commit = sas.parse(base64.b64decode(seen["payloads"][0]))
    await exchange(g, pid, sas.reveal_message(n_g))
    revealed = (await exchange(j, pid))["payloads"][1]
    _, n_g_seen = sas.parse(base64.b64decode(revealed))
    sas.check_reveal(commit, pk_g, n_g_seen)
    assert sas.sas(pk_g, pk_j, n_g, n_j) == sas.sas(pk_g, pk_j, n_g_seen, n_j)
    assert (await call("confirm", g, {"pairing_id": pid, "accept": True}))["status"] == (
        "confirmed"
    )
    await exchange(g, pid, sas.seal_book_key(book_key, seed_of(g), pk_j))
    boxed = (await exchange(j, pid))["payloads"][-1]
    assert sas.open_book_key(base64.b64decode(boxed), seed_of(j), pk_g) == book_key
    j.book_id = session.book_id
    return str(pid)


async def photo_round_trip(
    client: httpx.AsyncClient, device: TracedKey, session: Session, book_key: bytes
) -> None:
    """An encrypted photo up through its presigned URL, completed, and read back."""
    plain = f"canary-photo-{uuid.uuid4().hex}"
    session.secrets.add("plaintext of the photo", plain)
    blob = encrypt(book_key, plain)
    headers = {**session.via, **device.auth()}
    upload = await client.post(
        "/api/v1/photos/upload",
        json={"book_id": session.book_id, "size_bytes": len(blob), "mime_type": "image/jpeg"},
        headers=headers,
    )
    assert upload.status_code == 201, upload.text
    made = upload.json()["data"]
    put = await client.put(made["upload_url"], content=blob, headers=made["upload_headers"])
    assert put.status_code in (200, 204), put.text
    photo_id = made["photo_id"]
    done = await client.post(f"/api/v1/photos/{photo_id}/complete", headers=headers)
    assert done.status_code == 200, done.text
    got = await client.get(f"/api/v1/photos/{photo_id}", headers=headers)
    assert got.status_code == 200, got.text
    body = (await client.get(got.json()["data"]["download_url"])).content
    assert body == blob  # stored and served exactly as encrypted
    session.ciphertexts["photo"] = blob.hex()


async def s3_objects(endpoint: str) -> dict[str, bytes]:
    """Every object of every bucket, key -> body."""
    import aioboto3

    session = aioboto3.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    out: dict[str, bytes] = {}
    async with session.client("s3", endpoint_url=endpoint) as s3:
        for key in await s3_object_keys(endpoint):
            bucket, _, name = key.partition("/")
            got = await s3.get_object(Bucket=bucket, Key=name)
            out[key] = await got["Body"].read()
    return out
