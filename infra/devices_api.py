"""Devices and books over HTTP: register, list, revoke, erase, and the audit export.

Handlers are thin: read the body (413), authenticate (401), count limits (429),
authorise (403), validate (400), then call the domain — the precedence of docs/CONTRACT.md §3.
"""

from __future__ import annotations

import base64
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra import openapi as doc
from infra import tokens
from infra.clock import rfc3339
from infra.context import Capability, Infra, count_call, enforce
from infra.envelope import no_content, ok
from infra.errors import ApiError, forbidden
from infra.members import PENDING, public_device
from infra.validate import BOOK_ID, DEVICE_ID, base64_bytes, parse_object, read_body, string

log = logging.getLogger("homepocket.devices")

CLOSE_REVOKED = 4403
CLOSE_ERASED = 4410


def build(infra: Infra) -> Capability:
    s = infra.settings

    async def register(request: Request) -> Response:
        raw = await read_body(request, s.max_body_bytes)
        origin = infra.origin(request)
        verdict = await count_call(
            infra, "RATE_LIMIT_REGISTRATION", infra.ip_key(request), fail_closed=True, origin=origin
        )
        authorization = request.headers.get("authorization")
        tokens.read_unverified(tokens.bearer(authorization))  # 401 before 400
        body = parse_object(raw)
        public_key = base64_bytes(body, "public_key", exact=32)
        claims = infra.auth.verify_new_key(authorization, public_key)
        enforce(verdict, "RATE_LIMIT_REGISTRATION")
        book_id = string(body, "book_id", pattern=BOOK_ID, max_len=128, required=False)
        book_ref = infra.hasher.book_ref(book_id) if book_id else None
        try:
            result = await infra.members.register(
                claims.sub, base64.b64encode(public_key).decode(), book_ref, infra.now()
            )
        except ApiError as exc:
            if exc.code == "FORBIDDEN":  # a revoked key: audited with the other refusals
                exc.device_id = claims.sub
                raise
            await infra.audit.record(
                "device",
                "register",
                exc.code.lower(),
                device_id=claims.sub,
                book_ref=book_ref,
                origin=origin,
            )
            raise
        if result.created:
            await infra.audit.record(
                "device",
                "register",
                "success",
                device_id=claims.sub,
                book_ref=result.device.book_ref,
                origin=origin,
            )
        data = {
            "device_id": result.device.device_id,
            "book_id": book_id,
            "created_at": rfc3339(result.device.created_at),
        }
        return ok(request, data, 201 if result.created else 200)

    async def list_devices(request: Request) -> Response:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        book_ref = infra.auth.require_member(caller, request.path_params["book_id"])
        await infra.members.touch(caller.device, infra.now())
        devices = await infra.members.list_book(book_ref)
        online = await infra.live.online_devices(book_ref)
        listed = [public_device(d, caller.device_id, online) for d in devices]
        return ok(request, {"devices": listed, "total_count": len(listed)})

    async def revoke(request: Request) -> Response:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        book_ref = infra.auth.require_member(caller, request.path_params["book_id"])
        target_id = request.path_params["device_id"]
        target = await infra.members.get(target_id) if DEVICE_ID.fullmatch(target_id) else None
        if target is None or target.book_ref != book_ref or target.revoked:
            raise ApiError("DEVICE_NOT_FOUND", "No such device in this book.")
        _, members_left = await infra.members.revoke(target_id, book_ref, infra.now())
        await infra.hooks.device_revoked(book_ref, target_id)
        await infra.live.close_device(book_ref, target_id, CLOSE_REVOKED, "FORBIDDEN")
        if target.role != PENDING:
            await infra.live.send_to_book(
                book_ref, {"type": "presence", "device_id": target_id, "status": "revoked"}
            )
        await infra.audit.record(
            "device",
            "revoke",
            "success",
            device_id=caller.device_id,
            book_ref=book_ref,
            origin=infra.origin(request),
        )
        if members_left == 0:
            await erase(book_ref, caller.device_id, request)
        return no_content()

    async def erase_book(request: Request) -> Response:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        book_ref = infra.auth.require_member(caller, request.path_params["book_id"])
        await erase(book_ref, caller.device_id, request)
        return no_content()

    async def erase(book_ref: str, by_device: str, request: Request) -> None:
        """Everything of the book goes; the audit keeps only the erasure itself."""
        device_ids = await infra.members.device_ids_of_book(book_ref)
        await infra.hooks.book_erased(book_ref)
        await infra.members.erase_book(book_ref)
        await infra.audit.erase_book(book_ref, device_ids)
        await infra.audit.record(
            "book",
            "erase",
            "success",
            device_id=by_device,
            book_ref=book_ref,
            origin=infra.origin(request),
        )
        await infra.live.close_book(book_ref, CLOSE_ERASED, "BOOK_ERASED")

    async def audit_export(request: Request) -> Response:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        infra.auth.require_not_revoked(caller)
        if caller.device.role == PENDING:
            raise forbidden("pending", caller.device_id)
        claimed = caller.claims.book_id
        if claimed is not None and infra.hasher.book_ref(claimed) != caller.device.book_ref:
            raise forbidden("wrong_book", caller.device_id)
        before = _query_int(request, "before", 1, 2**62)
        limit = min(_query_int(request, "limit", 1, None) or 50, 200)
        events, cursor = await infra.audit.for_device(caller.device_id, before, limit)
        return ok(request, {"events": events, "next_cursor": cursor})

    routes = [
        Route("/api/v1/devices", register, methods=["POST"]),
        Route("/api/v1/books/{book_id}/devices", list_devices, methods=["GET"]),
        Route("/api/v1/books/{book_id}/devices/{device_id}", revoke, methods=["DELETE"]),
        Route("/api/v1/books/{book_id}", erase_book, methods=["DELETE"]),
        Route("/api/v1/audit", audit_export, methods=["GET"]),
    ]
    return Capability("devices", routes, openapi_paths=doc.DEVICES)


def _query_int(request: Request, name: str, minimum: int, maximum: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise ApiError("VALIDATION_ERROR", f"{name}: must be a whole number", {"field": name})
    value = int(raw)
    if value < minimum:
        raise ApiError("VALIDATION_ERROR", f"{name}: must be at least {minimum}", {"field": name})
    return min(value, maximum) if maximum is not None else value
