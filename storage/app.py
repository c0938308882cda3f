"""Photo and snapshot endpoints over HTTP (docs/CONTRACT.md §3), the local blob URLs, the
sweeper and the hooks.

Handlers are thin adapters in the precedence of contract §3: read the body (413), authenticate
(401), count limits (429), authorise (403), validate (400), then the domain (404, 409).
They never log or store a photo's bytes, a transaction id or a mime type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from infra.auth import Caller
from infra.clock import rfc3339
from infra.context import Capability, Check, Infra, count_call, enforce
from infra.envelope import no_content, ok
from infra.errors import ApiError, forbidden
from infra.periodic import every
from infra.validate import BOOK_ID, integer, parse_object, read_body, required_string, string
from storage.blobs import BlobStore, open_blob_store
from storage.docs import BLOBS, PHOTOS, SNAPSHOTS
from storage.photos import Photos, not_found
from storage.snapshot_routes import snapshot_routes
from storage.snapshots import Snapshots
from storage.uploads import Limits, Uploads

log = logging.getLogger("homepocket.storage")

UPLOAD_LIMIT = "RATE_LIMIT_PHOTO_UPLOAD"
GET_LIMIT = "RATE_LIMIT_PHOTO_GET"
URL_TTL_S = 300
SWEEP_EVERY_S = 600.0
PHOTO_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Runtime:
    """What the capability holds while the app runs (tests reach the sweeper through it)."""

    store: BlobStore
    limits: Limits
    shared: Uploads | None = None
    photos: Photos | None = None
    snapshots: Snapshots | None = None
    sweeper: asyncio.Task[None] | None = field(default=None, repr=False)

    def domain(self) -> Photos:
        if self.photos is None:
            raise RuntimeError("storage is not started")
        return self.photos

    def uploads(self) -> Uploads:
        """Quota, erasure and the sweeper, for photos and snapshots alike."""
        if self.shared is None:
            raise RuntimeError("storage is not started")
        return self.shared

    def snapshot_domain(self) -> Snapshots:
        if self.snapshots is None:
            raise RuntimeError("storage is not started")
        return self.snapshots


def build(infra: Infra) -> Capability:
    return make(infra)[0]


def make(
    infra: Infra, *, url_ttl_s: int = URL_TTL_S, sweep_every_s: float = SWEEP_EVERY_S
) -> tuple[Capability, Runtime]:
    """The capability and its runtime; `url_ttl_s` is shortened only by tests."""
    s = infra.settings
    limits = Limits(
        s.photo_max_bytes, s.book_quota_bytes, url_ttl_s, snapshot_max_bytes=s.snapshot_max_bytes
    )
    rt = Runtime(open_blob_store(s, infra.clock), limits)

    def book_of(caller: Caller, body: dict[str, Any]) -> str:
        """The caller's own book (403 otherwise); the body must name that book."""
        book_ref = infra.auth.require_book_of_caller(caller)
        book_id = required_string(body, "book_id", pattern=BOOK_ID, max_len=128)
        if infra.hasher.book_ref(book_id) != book_ref:
            raise forbidden("wrong_book")
        return book_ref

    async def upload(request: Request) -> Response:
        raw = await read_body(request, s.max_body_bytes)
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        await limit(UPLOAD_LIMIT, caller)
        try:
            body = parse_object(raw)
        except ApiError:
            infra.auth.require_book_of_caller(caller)  # 403 ranks above a malformed body
            raise
        book_ref = book_of(caller, body)
        size_bytes = integer(body, "size_bytes", minimum=1)
        assert size_bytes is not None
        string(body, "transaction_id", max_len=256, required=False)  # app data: not kept
        string(body, "mime_type", max_len=255, required=False)  # app data: not kept
        made = await rt.domain().begin_upload(book_ref, size_bytes)
        await infra.members.touch(caller.device, infra.now())
        await audit(request, "upload", caller, book_ref)
        data = {
            "photo_id": made.photo.photo_id,
            "s3_key": made.photo.key,
            "upload_url": made.put.url,
            "upload_method": "PUT",
            "upload_headers": made.put.headers,
            "expires_in": limits.url_ttl_s,
        }
        return ok(request, data, 201)

    async def complete(request: Request) -> Response:
        await read_body(request, s.max_body_bytes)
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        book_ref = infra.auth.require_book_of_caller(caller)
        photo = await rt.domain().complete(book_ref, photo_id_of(request))
        await infra.members.touch(caller.device, infra.now())
        return ok(request, {"photo_id": photo.photo_id, "size_bytes": photo.size_bytes})

    async def get_photo(request: Request) -> Response:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        await limit(GET_LIMIT, caller)
        book_ref = infra.auth.require_book_of_caller(caller)
        photo, url = await rt.domain().download(book_ref, photo_id_of(request))
        await infra.members.touch(caller.device, infra.now())
        data = {
            "photo_id": photo.photo_id,
            "download_url": url,
            "expires_in": limits.url_ttl_s,
            "size_bytes": photo.size_bytes,
            "created_at": rfc3339(photo.created_at),
        }
        return ok(request, data)

    async def delete_photo(request: Request) -> Response:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        book_ref = infra.auth.require_book_of_caller(caller)
        await rt.domain().delete(book_ref, photo_id_of(request))
        await infra.members.touch(caller.device, infra.now())
        await audit(request, "delete", caller, book_ref)
        return no_content()

    async def limit(name: str, caller: Caller) -> None:
        """Per device; when the limit store is down, photo traffic goes on (docs/CONTRACT.md §6)."""
        enforce(await count_call(infra, name, caller.device_id, fail_closed=False), name)

    async def audit(
        request: Request, action: str, caller: Caller, book_ref: str, event: str = "photo"
    ) -> None:
        await infra.audit.record(
            event,
            action,
            "success",
            device_id=caller.device_id,
            book_ref=book_ref,
            origin=infra.origin(request),
        )

    async def erased(book_ref: str) -> None:
        await rt.uploads().erase_book(book_ref)

    async def start() -> None:
        await rt.store.start()
        rt.shared = Uploads(infra.db, rt.store, infra.clock, limits)
        rt.photos = Photos(rt.shared)
        rt.snapshots = Snapshots(rt.shared, lambda: infra.backlog)
        infra.snapshots = rt.snapshots
        rt.sweeper = asyncio.create_task(sweep_forever(rt.shared, sweep_every_s))

    async def stop() -> None:
        if rt.sweeper is not None:
            rt.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rt.sweeper
            rt.sweeper = None
        await rt.store.close()

    infra.hooks.on_book_erased.append(erased)
    routes: list[BaseRoute] = [
        Route("/api/v1/photos/upload", upload, methods=["POST"]),
        Route("/api/v1/photos/{photo_id}/complete", complete, methods=["POST"]),
        Route("/api/v1/photos/{photo_id}", get_photo, methods=["GET"]),
        Route("/api/v1/photos/{photo_id}", delete_photo, methods=["DELETE"]),
        *snapshot_routes(infra, rt.snapshot_domain, limits.url_ttl_s, audit),
    ]
    paths: dict[str, dict[str, object]] = {**PHOTOS, **SNAPSHOTS}
    checks: dict[str, Check] = {}
    if rt.store.name == "local":
        from storage.blob_routes import blob_routes
        from storage.local import LocalBlobStore

        assert isinstance(rt.store, LocalBlobStore)
        routes.extend(blob_routes(rt.store))
        paths.update(BLOBS)
    else:
        checks["s3"] = rt.store.ping
    cap = Capability("storage", routes, paths, start=start, stop=stop, ready_checks=checks)
    return cap, rt


def photo_id_of(request: Request) -> str:
    """Ids the server never made are as absent as another book's photo."""
    photo_id = str(request.path_params["photo_id"])
    if not PHOTO_ID.fullmatch(photo_id):
        raise not_found()
    return photo_id


async def sweep_forever(uploads: Uploads, every_s: float) -> None:
    """Abandoned uploads and refused deletions, until cancelled."""

    async def sweep() -> None:
        abandoned, deleted = await uploads.sweep()
        if abandoned or deleted:
            log.info("storage sweep", extra={"abandoned": abandoned, "deleted": deleted})

    await every(every_s, sweep, failed="storage sweep failed", log=log)
