"""Snapshot endpoints over HTTP: thin adapters over storage.snapshots.

In the contract's precedence: 413 (the body, then a declared size over
SNAPSHOT_MAX_BYTES, which needs no credentials to judge), 401, 403 (the path must name
the caller's own book), 400, then the domain's 404 and 409. A snapshot of another book
answers exactly as a made-up id. Never logs or stores a snapshot's bytes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra.auth import Caller
from infra.clock import rfc3339
from infra.context import Infra
from infra.envelope import ok
from infra.validate import integer, parse_object, read_body, required_string
from storage.snapshots import Snapshot, Snapshots, not_found

SNAPSHOT_ID = re.compile(r"[0-9a-f]{32}")
BASE = "/api/v1/books/{book_id}/snapshots"


# (request, action, caller, book_ref, event type): storage's audit record of a success
Audit = Callable[[Request, str, Caller, str, str], Awaitable[None]]


def snapshot_routes(
    infra: Infra, domain: Callable[[], Snapshots], url_ttl_s: int, audit: Audit
) -> list[Route]:
    s = infra.settings

    async def member(request: Request) -> tuple[Caller, str]:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        return caller, infra.auth.require_member(caller, request.path_params["book_id"])

    async def create(request: Request) -> Response:
        raw = await read_body(request, s.max_body_bytes)
        declared_size_check(raw, domain().check_size)
        caller, book_ref = await member(request)
        body = parse_object(raw)
        epoch = required_string(body, "epoch", max_len=64)
        covers_seq = integer(body, "covers_seq", minimum=0)
        size_bytes = integer(body, "size_bytes", minimum=1)
        assert covers_seq is not None and size_bytes is not None
        snap, put = await domain().begin_upload(book_ref, epoch, covers_seq, size_bytes)
        await infra.members.touch(caller.device, infra.now())
        await audit(request, "upload", caller, book_ref, "snapshot")
        data = {
            "snapshot_id": snap.snapshot_id,
            "upload_url": put.url,
            "upload_method": "PUT",
            "upload_headers": put.headers,
            "expires_in": url_ttl_s,
        }
        return ok(request, data, 201)

    async def complete(request: Request) -> Response:
        await read_body(request, s.max_body_bytes)
        caller, book_ref = await member(request)
        snap = await domain().complete(book_ref, snapshot_id_of(request))
        await infra.members.touch(caller.device, infra.now())
        return ok(request, described(snap))

    async def latest(request: Request) -> Response:
        caller, book_ref = await member(request)
        snap, url = await domain().download(book_ref)
        await infra.members.touch(caller.device, infra.now())
        data = {
            **described(snap),
            "download_url": url,
            "created_at": rfc3339(snap.created_at),
        }
        return ok(request, data)

    return [
        Route(BASE, create, methods=["POST"]),
        Route(BASE + "/latest", latest, methods=["GET"]),
        Route(BASE + "/{snapshot_id}/complete", complete, methods=["POST"]),
    ]


def declared_size_check(raw: bytes, check: Callable[[int], None]) -> None:
    """A declared size over the limit is 413 whoever asks: it ranks first, and telling
    it reveals nothing but the limit. Anything malformed is left to the checks after
    authentication."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    size = body.get("size_bytes") if isinstance(body, dict) else None
    if isinstance(size, int) and not isinstance(size, bool):
        check(size)


def described(snap: Snapshot) -> dict[str, object]:
    return {
        "snapshot_id": snap.snapshot_id,
        "epoch": snap.epoch,
        "covers_seq": snap.covers_seq,
        "size_bytes": snap.size_bytes,
    }


def snapshot_id_of(request: Request) -> str:
    """Ids the server never made are as absent as another book's snapshot."""
    snapshot_id = str(request.path_params["snapshot_id"])
    if not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise not_found()
    return snapshot_id
