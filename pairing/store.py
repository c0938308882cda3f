"""Where pairing codes and sessions live, behind one interface with two backends.

Codes are keyed by an HMAC of the code, never the code itself, so a dump of the store
lists no live code. The raw book_id lives only inside a session's value, never in a
key name. Every step that two instances could race on (claiming a code, deciding a
session, taking an expired one) is one atomic store operation. Times passed in are
the server clock's, so expiry is tested by moving the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

WAITING = "waiting"
MATCHED = "matched"
CONFIRMED = "confirmed"
REJECTED = "rejected"

Side = Literal["g", "j"]
ClaimResult = Literal["ok", "expired", "invalid"]
DepositResult = Literal["ok", "full", "gone", "closed"]


class StoreDown(Exception):
    """The store did not answer: pairing fails closed (503)."""


@dataclass(frozen=True)
class Session:
    """One pairing, from generate until it is decided or its time is up."""

    pairing_id: str
    book_id: str  # raw: it must reach the joiner, so it lives here and only here
    book_ref: str
    generator: str
    generator_pk: str  # base64
    code_mac: str
    status: str
    expires_at: float
    joiner: str | None = None
    joiner_pk: str | None = None

    def with_joiner(self, joiner: str, joiner_pk: str, expires_at: float) -> Session:
        return replace(
            self, joiner=joiner, joiner_pk=joiner_pk, status=MATCHED, expires_at=expires_at
        )


@dataclass(frozen=True)
class Due:
    """A matched session whose time ran out undecided: its joiner must leave the book."""

    pairing_id: str
    book_ref: str
    joiner: str


@dataclass(frozen=True)
class Decision:
    """`decided`: this call made the decision; `already`: an earlier one did; `waiting`:
    nobody verified yet; `gone`: no such live session."""

    outcome: Literal["decided", "already", "waiting", "gone"]
    status: str | None
    session: Session | None


class PairingStore(Protocol):
    async def create(self, session: Session, code_expires_at: float, now: float) -> bool:
        """Store a new code and its waiting session; False when the code is taken (live,
        or still a tombstone)."""
        ...

    async def claim(self, code_mac: str, now: float) -> tuple[ClaimResult, str | None]:
        """Consume a live code atomically, returning its pairing_id; exactly one of any
        number of racing callers gets `ok`. An expired code stays a tombstone."""
        ...

    async def get(self, pairing_id: str, now: float) -> Session | None: ...

    async def attach(self, session: Session, now: float) -> bool:
        """Record the verified joiner (session from `Session.with_joiner`); False when the
        waiting session is gone meanwhile."""
        ...

    async def deposit(
        self, pairing_id: str, side: Side, payload: str, max_per_side: int, now: float
    ) -> DepositResult: ...

    async def payloads(self, pairing_id: str, side: Side) -> list[str]: ...

    async def decide(self, pairing_id: str, status: str, now: float) -> Decision:
        """matched -> confirmed/rejected, once; the first decision stands."""
        ...

    async def drop(self, pairing_id: str) -> Session | None:
        """Remove a session, its payloads and its code at once; returns what was there."""
        ...

    async def of_book(self, book_ref: str) -> list[str]: ...

    async def of_device(self, device_id: str) -> list[str]: ...

    async def take_due(self, now: float) -> list[Due]:
        """Matched sessions whose time is up, each handed to exactly one caller."""
        ...

    async def reserve(self, key: str, ttl_s: int) -> int:
        """Hold an in-flight slot for `key` (shared by every instance); returns how many
        are held now, this one included."""
        ...

    async def release(self, key: str) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
