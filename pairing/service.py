"""Pairing's rules (docs/CONTRACT.md §5): codes, the pending joiner, exchange, confirm, expiry.

Transport-free: handlers in `pairing.app` call these with an authenticated device.
It never reads or changes a payload, never logs a code, a payload or a raw book_id,
and never lets a joiner past `pending` without the generating device's confirm.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.clock import Clock
from infra.errors import ApiError, forbidden, validation
from infra.ids import IdHasher
from infra.members import Device, Members
from infra.periodic import every
from infra.ports import LiveChannel
from pairing.store import (
    CONFIRMED,
    MATCHED,
    REJECTED,
    WAITING,
    PairingStore,
    Session,
    Side,
)

log = logging.getLogger("homepocket.pairing")

MAX_PAYLOADS_PER_SIDE = 8
CODE_ATTEMPTS = 20  # a million codes: a collision streak this long means something is wrong


def not_found() -> ApiError:
    return ApiError("PAIRING_NOT_FOUND", "No such pairing session.")


def invalid_code() -> ApiError:
    return ApiError("INVALID_SHORT_CODE", "The code is wrong or was already used.")


@dataclass(frozen=True)
class Config:
    code_ttl_s: int
    session_ttl_s: int
    max_devices_per_book: int


class Pairing:
    def __init__(
        self,
        store: PairingStore,
        members: Members,
        hasher: IdHasher,
        clock: Clock,
        live: Callable[[], LiveChannel],
        config: Config,
    ) -> None:
        self.store = store
        self.members = members
        self.hasher = hasher
        self.clock = clock
        self.live = live  # read at call time: the relay wires its channel in after build
        self.config = config

    def code_mac(self, code: str) -> str:
        """What a code is stored under. HMAC under ID_HASH_KEY; the `:` keeps it apart
        from every book_ref, since a book_id cannot hold one."""
        return self.hasher.book_ref("pairing-code:" + code)

    async def generate(self, device: Device, book_id: str, book_ref: str) -> tuple[str, Session]:
        now = self.clock.now()
        code_expires_at = now + self.config.code_ttl_s
        for _ in range(CODE_ATTEMPTS):
            code = f"{secrets.randbelow(10**6):06d}"
            session = Session(
                pairing_id="pair_" + secrets.token_urlsafe(18),
                book_id=book_id,
                book_ref=book_ref,
                generator=device.device_id,
                generator_pk=device.public_key,
                code_mac=self.code_mac(code),
                status=WAITING,
                expires_at=code_expires_at,
            )
            if await self.store.create(session, code_expires_at, now):
                return code, session
        raise ApiError("SERVICE_UNAVAILABLE", "No free pairing code; try again shortly.")

    async def verify(self, joiner: Device, code: str) -> Session:
        """Claim the code and make the caller a pending member. The caller was checked
        already (registered, in no book, not revoked, not limited)."""
        now = self.clock.now()
        result, pairing_id = await self.store.claim(self.code_mac(code), now)
        if result == "expired":
            raise ApiError("SHORT_CODE_EXPIRED", "The code has expired.")
        session = await self.store.get(pairing_id, now) if pairing_id else None
        if result != "ok" or session is None:
            raise invalid_code()
        try:
            added = await self.members.add_pending(
                joiner.device_id, session.book_ref, self.config.max_devices_per_book
            )
        except ApiError:  # joined another book a moment ago: this code is spent anyway
            await self.store.drop(session.pairing_id)
            raise
        if not added:
            await self.store.drop(session.pairing_id)
            raise ApiError("BOOK_FULL", "The book has reached its device limit.")
        matched = session.with_joiner(
            joiner.device_id, joiner.public_key, now + self.config.session_ttl_s
        )
        if not await self.store.attach(matched, now):  # dropped meanwhile (revoked, erased)
            await self.members.remove_pending(joiner.device_id, session.book_ref)
            raise invalid_code()
        await self.live().send_to_device(
            matched.book_ref,
            matched.generator,
            {
                "type": "pairing_completed",
                "pairing_id": matched.pairing_id,
                "peer_device_id": matched.joiner,
                "peer_public_key": matched.joiner_pk,
            },
        )
        return matched

    async def exchange(
        self, device: Device, claimed_book_ref: str | None, pairing_id: str, payload: str | None
    ) -> tuple[Session, dict[str, Any]]:
        now = self.clock.now()
        session = await self.store.get(pairing_id, now)
        if session is None or device.device_id not in (session.generator, session.joiner):
            raise not_found()
        if claimed_book_ref is not None and claimed_book_ref != session.book_ref:
            raise forbidden("wrong_book")
        side: Side = "g" if device.device_id == session.generator else "j"
        if payload is not None:
            outcome = await self.store.deposit(
                pairing_id, side, payload, MAX_PAYLOADS_PER_SIDE, now
            )
            if outcome == "gone":
                raise not_found()
            if outcome == "full":
                raise validation("payload", f"at most {MAX_PAYLOADS_PER_SIDE} per device")
            if outcome == "closed":
                raise validation("payload", "the pairing was rejected")
            session = await self.store.get(pairing_id, now) or session
        answer: dict[str, Any]
        if session.status == WAITING:
            answer = {"peer_public_key": None, "peer_device_id": None, "payloads": []}
        else:
            peer_is_g = side == "j"
            answer = {
                "peer_public_key": session.generator_pk if peer_is_g else session.joiner_pk,
                "peer_device_id": session.generator if peer_is_g else session.joiner,
                "payloads": await self.store.payloads(pairing_id, "g" if peer_is_g else "j"),
            }
        return session, {"status": session.status, **answer}

    async def confirm(self, device: Device, pairing_id: str, accept: bool) -> tuple[Session, str]:
        now = self.clock.now()
        session = await self.store.get(pairing_id, now)
        if session is None or device.device_id not in (session.generator, session.joiner):
            raise not_found()
        if device.device_id != session.generator:
            raise forbidden("not_generator")
        decision = await self.store.decide(pairing_id, CONFIRMED if accept else REJECTED, now)
        if decision.outcome == "gone":
            raise not_found()
        if decision.outcome == "waiting":
            raise validation("pairing_id", "nobody has verified this code yet")
        status = str(decision.status)
        if decision.outcome == "decided" and session.joiner is not None:
            if status == CONFIRMED:
                await self.members.promote(session.joiner, session.book_ref)
                await self.live().send_to_book(
                    session.book_ref,
                    {"type": "presence", "device_id": session.joiner, "status": "joined"},
                    exclude_device=session.joiner,
                )
            else:
                await self.members.remove_pending(session.joiner, session.book_ref)
        return session, status

    async def drop_device(self, book_ref: str, device_id: str) -> None:
        """A revoked device's codes and sessions go; a joiner it was pairing leaves."""
        for pairing_id in await self.store.of_device(device_id):
            session = await self.store.drop(pairing_id)
            if (
                session is not None
                and session.status == MATCHED
                and session.joiner is not None
                and session.joiner != device_id
            ):
                await self.members.remove_pending(session.joiner, session.book_ref)

    async def drop_book(self, book_ref: str) -> None:
        for pairing_id in await self.store.of_book(book_ref):
            await self.store.drop(pairing_id)
        await self.store.forget_book(book_ref)

    async def sweep(self) -> int:
        """Remove the joiners whose session ended unconfirmed; returns how many."""
        removed = 0
        for due in await self.store.take_due(self.clock.now()):
            if await self.members.remove_pending(due.joiner, due.book_ref):
                removed += 1
        return removed

    async def sweep_forever(self, every_s: float) -> None:
        async def sweep() -> None:
            removed = await self.sweep()
            if removed:
                log.info("pairing sessions expired", extra={"removed": removed})

        await every(
            every_s, sweep, failed="pairing sweep failed", log=log, failure_pause_s=every_s * 4
        )
