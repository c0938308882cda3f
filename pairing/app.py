"""Pairing over HTTP: `POST /api/v1/pairing/{generate,verify,exchange,confirm}`.

Thin adapters in the order of docs/CONTRACT.md §3: read the body (413), authenticate (401), limits
(429), authorise (403), validate (400), then `pairing.service` (404, 409). The store
is chosen once, here, from the settings. A short code never reaches a log, a metric,
an audit entry or an error message; a payload is passed on as received.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra.clock import rfc3339
from infra.context import Capability, Infra, count_call, enforce
from infra.envelope import ok
from infra.errors import ApiError, forbidden, validation
from infra.members import PENDING
from infra.ratelimit import LimitStoreDown
from infra.ratelimit import fail_closed as limiter_down
from infra.validate import (
    BOOK_ID,
    base64_bytes,
    base64_size,
    boolean,
    parse_object,
    read_body,
    required_string,
    string,
)
from pairing.docs import PATHS
from pairing.service import Config, Pairing
from pairing.store import PairingStore, StoreDown

GENERATE_LIMIT = "RATE_LIMIT_PAIRING_GENERATE"
VERIFY_LIMIT = "RATE_LIMIT_PAIRING_VERIFY_FAILURES"
SHORT_CODE = re.compile(r"[0-9]{6}")
PAIRING_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_PAYLOAD_BYTES = 64 * 1024
TOMBSTONE_S = 300  # docs/CONTRACT.md §5: an expired code is told apart for 300 s
SWEEP_EVERY_S = 0.5
# A verify in flight holds a slot of its caller's remaining failure budget, so parallel
# guesses cannot overshoot the limit; a slot frees itself if an instance dies mid-call.
INFLIGHT_TTL_S = 30

Handler = Callable[[Request], Awaitable[Response]]


def open_store(infra: Infra) -> PairingStore:
    """Redis when REDIS_URL is set (shared by every instance), else this process."""
    if infra.settings.redis_url:
        from pairing.redis_store import RedisPairingStore

        return RedisPairingStore(infra.redis(), TOMBSTONE_S)
    from pairing.memory_store import MemoryPairingStore

    return MemoryPairingStore(TOMBSTONE_S)


def _fail_closed(handler: Handler) -> Handler:
    """An unreachable pairing store is a 503, like an unreachable limit store."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except StoreDown:
            raise ApiError("SERVICE_UNAVAILABLE", "Pairing is unavailable; try again.") from None

    return wrapped


class _State:
    service: Pairing | None = None

    def get(self) -> Pairing:
        if self.service is None:
            raise ApiError("SERVICE_UNAVAILABLE", "Pairing is starting; try again.")
        return self.service


def build(infra: Infra) -> Capability:
    s = infra.settings
    state = _State()

    async def start() -> None:
        state.service = Pairing(
            store=open_store(infra),
            members=infra.members,
            hasher=infra.hasher,
            clock=infra.clock,
            live=lambda: infra.live,
            config=Config(s.pairing_code_ttl_s, s.pairing_session_ttl_s, s.max_devices_per_book),
        )
        infra.spawn(state.service.sweep_forever(SWEEP_EVERY_S))

    async def stop() -> None:
        if state.service is not None:
            await state.service.store.close()

    async def on_device_revoked(book_ref: str, device_id: str) -> None:
        await state.get().drop_device(book_ref, device_id)

    async def on_book_erased(book_ref: str) -> None:
        await state.get().drop_book(book_ref)

    infra.hooks.on_device_revoked.append(on_device_revoked)
    infra.hooks.on_book_erased.append(on_book_erased)

    async def generate(request: Request) -> Response:
        raw = await read_body(request, s.max_body_bytes)
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        verdict = await count_call(infra, GENERATE_LIMIT, caller.device_id, fail_closed=True)
        enforce(verdict, GENERATE_LIMIT)
        try:
            book_id = required_string(parse_object(raw), "book_id", pattern=BOOK_ID, max_len=128)
        except ApiError:
            infra.auth.require_book_of_caller(caller)  # a 403 outranks the 400
            raise
        book_ref = infra.auth.require_member(caller, book_id)
        code, session = await state.get().generate(caller.device, book_id, book_ref)
        await infra.audit.record(
            "pairing",
            "generate",
            "success",
            device_id=caller.device_id,
            book_ref=book_ref,
            origin=infra.origin(request),
        )
        data = {
            "short_code": code,
            "pairing_id": session.pairing_id,
            "expires_at": rfc3339(session.expires_at),
            "ttl_seconds": s.pairing_code_ttl_s,
        }
        return ok(request, data, 201)

    async def verify(request: Request) -> Response:
        raw = await read_body(request, s.max_body_bytes)
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        limit_keys = [caller.device_id, infra.ip_key(request)]
        limited = await _failure_budgets(infra, limit_keys)
        infra.auth.require_not_revoked(caller)
        if caller.device.role == PENDING:
            raise forbidden("pending")
        body = parse_object(raw)
        public_key = base64_bytes(body, "public_key", exact=32)
        if base64.b64encode(public_key).decode() != caller.device.public_key:
            raise validation("public_key", "must be the calling device's own key")
        code = required_string(body, "short_code", max_len=64)
        origin = infra.origin(request)

        async def failed(exc: ApiError) -> ApiError:
            await _count_failure(infra, limit_keys)
            await infra.audit.record(
                "pairing", "verify", exc.code.lower(), device_id=caller.device_id, origin=origin
            )
            return exc

        if not SHORT_CODE.fullmatch(code):
            raise await failed(ApiError("INVALID_SHORT_CODE", "The code is not 6 digits."))
        if caller.device.book_ref is not None:  # checked before the code: never consumed
            raise ApiError("DEVICE_EXISTS", "This device already belongs to a book.")
        async with _inflight(infra, state.get().store, limited):
            try:
                session = await state.get().verify(caller.device, code)
            except ApiError as exc:
                if exc.code in ("INVALID_SHORT_CODE", "SHORT_CODE_EXPIRED"):
                    raise await failed(exc) from None
                await infra.audit.record(
                    "pairing", "verify", exc.code.lower(), device_id=caller.device_id, origin=origin
                )
                raise
        await infra.audit.record(
            "pairing",
            "verify",
            "success",
            device_id=caller.device_id,
            book_ref=session.book_ref,
            origin=origin,
        )
        data = {
            "matched": True,
            "status": session.status,
            "pairing_id": session.pairing_id,
            "peer_public_key": session.generator_pk,
            "peer_device_id": session.generator,
            "book_id": session.book_id,
        }
        return ok(request, data)

    async def exchange(request: Request) -> Response:
        raw = await read_body(request, s.max_body_bytes)
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        infra.auth.require_not_revoked(caller)
        body = parse_object(raw)
        pairing_id = required_string(body, "pairing_id", pattern=PAIRING_ID, max_len=64)
        payload = string(body, "payload", max_len=MAX_PAYLOAD_BYTES * 4 // 3 + 4, required=False)
        if payload is not None:
            size = base64_size(payload)
            if size is None:
                raise validation("payload", "must be standard padded base64")
            if not 0 < size <= MAX_PAYLOAD_BYTES:
                raise validation("payload", f"must decode to 1 to {MAX_PAYLOAD_BYTES} bytes")
        claimed = caller.claims.book_id
        claimed_ref = infra.hasher.book_ref(claimed) if claimed else None
        session, data = await state.get().exchange(caller.device, claimed_ref, pairing_id, payload)
        if payload is not None:
            await infra.audit.record(
                "pairing",
                "exchange",
                "success",
                device_id=caller.device_id,
                book_ref=session.book_ref,
                origin=infra.origin(request),
            )
        return ok(request, data)

    async def confirm(request: Request) -> Response:
        raw = await read_body(request, s.max_body_bytes)
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        book_ref = infra.auth.require_book_of_caller(caller)  # pending joiners stop here
        body = parse_object(raw)
        pairing_id = required_string(body, "pairing_id", pattern=PAIRING_ID, max_len=64)
        accept = boolean(body, "accept")
        try:
            session, status = await state.get().confirm(caller.device, pairing_id, accept)
        except ApiError as exc:
            await infra.audit.record(
                "pairing",
                "confirm",
                exc.code.lower(),
                device_id=caller.device_id,
                book_ref=book_ref,
                origin=infra.origin(request),
            )
            raise
        await infra.audit.record(
            "pairing",
            "confirm",
            status,
            device_id=caller.device_id,
            book_ref=session.book_ref,
            origin=infra.origin(request),
        )
        return ok(request, {"status": status})

    routes = [
        Route("/api/v1/pairing/generate", _fail_closed(generate), methods=["POST"]),
        Route("/api/v1/pairing/verify", _fail_closed(verify), methods=["POST"]),
        Route("/api/v1/pairing/exchange", _fail_closed(exchange), methods=["POST"]),
        Route("/api/v1/pairing/confirm", _fail_closed(confirm), methods=["POST"]),
    ]
    return Capability("pairing", routes, openapi_paths=PATHS, start=start, stop=stop)


async def _failure_budgets(infra: Infra, keys: list[str]) -> list[str]:
    """429 when a key's failed verifies are used up; counts nothing (only failures
    count). Returns the keys whose limit is on."""
    limited: list[str] = []
    for key in keys:
        try:
            verdict = await infra.limiter.test(VERIFY_LIMIT, key)
        except LimitStoreDown:
            raise limiter_down() from None
        enforce(verdict, VERIFY_LIMIT)
        if verdict is not None:
            limited.append(key)
    return limited


async def _count_failure(infra: Infra, keys: list[str]) -> None:
    for key in keys:
        await count_call(infra, VERIFY_LIMIT, key, fail_closed=True)


@contextlib.asynccontextmanager
async def _inflight(infra: Infra, store: PairingStore, keys: list[str]) -> AsyncIterator[None]:
    """Hold a slot per limit key while the code is checked, then read the budget again:
    a guess goes on only if the guesses in flight fit in what is left. A failure is
    counted before its slot is freed, so however many guesses race, at most the limit
    of them can fail in a window (the rest get a 429 without touching the code)."""
    held: list[str] = []
    try:
        for key in keys:
            slot = "verify:" + key
            in_flight = await store.reserve(slot, INFLIGHT_TTL_S)
            held.append(slot)
            try:
                verdict = await infra.limiter.test(VERIFY_LIMIT, key)
            except LimitStoreDown:
                raise limiter_down() from None
            if verdict is not None and in_flight > (verdict.remaining or 0):
                enforce(dataclasses.replace(verdict, allowed=False), VERIFY_LIMIT)
        yield
    finally:
        for slot in held:
            await store.release(slot)
