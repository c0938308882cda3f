"""The embedded default: pairing state in this process's memory.

Each operation runs without awaiting, so it is atomic within the event loop; that is
all one process needs. It must never be used by several instances (it shares nothing).
Expired entries are removed by `take_due`, which the sweeper calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pairing.store import (
    CONFIRMED,
    MATCHED,
    REJECTED,
    WAITING,
    ClaimResult,
    Decision,
    DepositResult,
    Due,
    Session,
    Side,
)


@dataclass
class _Code:
    pairing_id: str
    expires_at: float


@dataclass
class _Entry:
    session: Session
    payloads: dict[str, list[str]] = field(default_factory=lambda: {"g": [], "j": []})


class MemoryPairingStore:
    def __init__(self, tombstone_s: int) -> None:
        self.tombstone_s = tombstone_s
        self._codes: dict[str, _Code] = {}
        self._sessions: dict[str, _Entry] = {}
        self._inflight: dict[str, int] = {}

    def _live(self, pairing_id: str, now: float) -> _Entry | None:
        entry = self._sessions.get(pairing_id)
        if entry is None or entry.session.expires_at <= now:
            return None
        return entry

    async def create(self, session: Session, code_expires_at: float, now: float) -> bool:
        code = self._codes.get(session.code_mac)
        if code is not None and code.expires_at + self.tombstone_s > now:
            return False
        self._codes[session.code_mac] = _Code(session.pairing_id, code_expires_at)
        self._sessions[session.pairing_id] = _Entry(session)
        return True

    async def claim(self, code_mac: str, now: float) -> tuple[ClaimResult, str | None]:
        code = self._codes.get(code_mac)
        if code is None:
            return "invalid", None
        if now >= code.expires_at:
            if now >= code.expires_at + self.tombstone_s:
                del self._codes[code_mac]
                return "invalid", None
            return "expired", None
        del self._codes[code_mac]
        return "ok", code.pairing_id

    async def get(self, pairing_id: str, now: float) -> Session | None:
        entry = self._live(pairing_id, now)
        return entry.session if entry else None

    async def attach(self, session: Session, now: float) -> bool:
        entry = self._live(session.pairing_id, now)
        if entry is None or entry.session.status != WAITING:
            return False
        entry.session = session
        return True

    async def deposit(
        self, pairing_id: str, side: Side, payload: str, max_per_side: int, now: float
    ) -> DepositResult:
        entry = self._live(pairing_id, now)
        if entry is None:
            return "gone"
        if entry.session.status == REJECTED:
            return "closed"
        if len(entry.payloads[side]) >= max_per_side:
            return "full"
        entry.payloads[side].append(payload)
        return "ok"

    async def payloads(self, pairing_id: str, side: Side) -> list[str]:
        entry = self._sessions.get(pairing_id)
        return list(entry.payloads[side]) if entry else []

    async def decide(self, pairing_id: str, status: str, now: float) -> Decision:
        entry = self._live(pairing_id, now)
        if entry is None:
            return Decision("gone", None, None)
        current = entry.session.status
        if current == WAITING:
            return Decision("waiting", current, entry.session)
        if current in (CONFIRMED, REJECTED):
            return Decision("already", current, entry.session)
        entry.session = replace(entry.session, status=status)
        return Decision("decided", status, entry.session)

    async def drop(self, pairing_id: str) -> Session | None:
        entry = self._sessions.pop(pairing_id, None)
        if entry is None:
            return None
        code = self._codes.get(entry.session.code_mac)
        if code is not None and code.pairing_id == pairing_id:
            del self._codes[entry.session.code_mac]
        return entry.session

    async def of_book(self, book_ref: str) -> list[str]:
        return [p for p, e in self._sessions.items() if e.session.book_ref == book_ref]

    async def of_device(self, device_id: str) -> list[str]:
        return [
            p
            for p, e in self._sessions.items()
            if device_id in (e.session.generator, e.session.joiner)
        ]

    async def take_due(self, now: float) -> list[Due]:
        due: list[Due] = []
        for pairing_id, entry in list(self._sessions.items()):
            s = entry.session
            if s.expires_at > now:
                continue
            del self._sessions[pairing_id]
            if s.status == MATCHED and s.joiner is not None:
                due.append(Due(pairing_id, s.book_ref, s.joiner))
        for mac, code in list(self._codes.items()):
            if code.expires_at + self.tombstone_s <= now:
                del self._codes[mac]
        return due

    async def reserve(self, key: str, ttl_s: int) -> int:
        held = self._inflight.get(key, 0) + 1
        self._inflight[key] = held
        return held

    async def release(self, key: str) -> None:
        held = self._inflight.get(key, 0) - 1
        if held > 0:
            self._inflight[key] = held
        else:
            self._inflight.pop(key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
