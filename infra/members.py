"""Devices and books: who is registered, who belongs to which book, who is revoked.

Books are known only by `book_ref`. A device belongs to at most one book, as a
`member` or, between pairing's verify and confirm, as `pending`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from infra.clock import rfc3339
from infra.db import Database, Queries, Row
from infra.errors import ApiError

MEMBER = "member"
PENDING = "pending"

_COLUMNS = "device_id, public_key, book_ref, role, created_at, last_active_at, revoked_at"
# Writing last_active_at on every call would be a write per request; a minute is plenty.
TOUCH_INTERVAL_S = 60
LOOKUP_BATCH = 500  # device ids per query of `lookup` (bound parameters)


@dataclass(frozen=True)
class Device:
    device_id: str
    public_key: str  # base64
    book_ref: str | None
    role: str | None
    created_at: int
    last_active_at: int
    revoked_at: int | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def is_member_of(self, book_ref: str) -> bool:
        return self.book_ref == book_ref and self.role == MEMBER and not self.revoked

    @classmethod
    def from_row(cls, row: Row) -> Device:
        return cls(**row)


@dataclass(frozen=True)
class Registration:
    device: Device
    created: bool  # 201 when the call created the device or its book, else 200


class Members:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._wanted: dict[str, list[asyncio.Future[Device | None]]] = {}
        self._reads: set[asyncio.Task[None]] = set()

    async def get(self, device_id: str, q: Queries | None = None) -> Device | None:
        row = await (q or self.db).fetchrow(
            f"SELECT {_COLUMNS} FROM devices WHERE device_id = $1", device_id
        )
        return Device.from_row(row) if row else None

    async def lookup(self, device_id: str) -> Device | None:
        """`get` for authentication, read fresh from the store as `get` is, but the
        lookups asked for in one loop turn share one query: a reconnect storm's
        thousands of handshakes then cost a query per turn, not one each (on SQLite
        each waited its turn for the one connection, and timed out past a few hundred)."""
        future: asyncio.Future[Device | None] = asyncio.get_running_loop().create_future()
        if not self._wanted:
            asyncio.get_running_loop().call_soon(self._read_wanted)
        self._wanted.setdefault(device_id, []).append(future)
        return await future

    def _read_wanted(self) -> None:
        wanted, self._wanted = self._wanted, {}
        ids = list(wanted)
        for start in range(0, len(ids), LOOKUP_BATCH):
            chunk = {i: wanted[i] for i in ids[start : start + LOOKUP_BATCH]}
            task = asyncio.ensure_future(self._read(chunk))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def _read(self, wanted: dict[str, list[asyncio.Future[Device | None]]]) -> None:
        marks = ", ".join(f"${n}" for n in range(1, len(wanted) + 1))
        try:
            rows = await self.db.fetch(
                f"SELECT {_COLUMNS} FROM devices WHERE device_id IN ({marks})", *wanted
            )
        except asyncio.CancelledError:
            for _, future in _waiting(wanted):
                future.cancel()
            raise
        except Exception as exc:  # every waiter gets the store's failure
            for _, future in _waiting(wanted):
                future.set_exception(exc)
            return
        found = {row["device_id"]: Device.from_row(row) for row in rows}
        for device_id, future in _waiting(wanted):
            future.set_result(found.get(device_id))

    async def book_exists(self, book_ref: str, q: Queries | None = None) -> bool:
        row = await (q or self.db).fetchrow(
            "SELECT 1 AS x FROM books WHERE book_ref = $1", book_ref
        )
        return row is not None

    async def register(
        self, device_id: str, public_key: str, book_ref: str | None, now: int
    ) -> Registration:
        """contract §3 `POST /devices`, atomically: a book is created by its first device."""
        async with self.db.transaction() as tx:
            device = await self.get(device_id, tx)
            if device is not None and device.revoked:
                raise ApiError("FORBIDDEN", "This device was revoked.", {"reason": "revoked"})
            if device is not None and device.book_ref is not None:
                if book_ref is None or book_ref == device.book_ref:
                    return Registration(device, created=False)
                raise ApiError("DEVICE_EXISTS", "This device already belongs to a book.")
            if book_ref is not None and await self.book_exists(book_ref, tx):
                raise ApiError("BOOK_EXISTS", "That book already exists.")
            created = device is None
            if device is None:
                # ON CONFLICT: a concurrent identical registration already made the row.
                await tx.execute(
                    "INSERT INTO devices (device_id, public_key, book_ref, role, created_at,"
                    " last_active_at) VALUES ($1, $2, NULL, NULL, $3, $3)"
                    " ON CONFLICT (device_id) DO NOTHING",
                    device_id,
                    public_key,
                    now,
                )
            if book_ref is not None:
                # The check above can race another first device; the insert decides.
                made = await tx.execute(
                    "INSERT INTO books (book_ref, created_at) VALUES ($1, $2)"
                    " ON CONFLICT (book_ref) DO NOTHING",
                    book_ref,
                    now,
                )
                if not made:
                    raise ApiError("BOOK_EXISTS", "That book already exists.")
                moved = await tx.execute(
                    "UPDATE devices SET book_ref = $2, role = $3 WHERE device_id = $1"
                    " AND book_ref IS NULL AND revoked_at IS NULL",
                    device_id,
                    book_ref,
                    MEMBER,
                )
                if not moved:  # it joined another book meanwhile
                    raise ApiError("DEVICE_EXISTS", "This device already belongs to a book.")
                created = True
            fresh = await self.get(device_id, tx)
            assert fresh is not None
            return Registration(fresh, created=created)

    async def list_book(self, book_ref: str, role: str = MEMBER) -> list[Device]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM devices WHERE book_ref = $1 AND role = $2"
            " AND revoked_at IS NULL ORDER BY created_at, device_id",
            book_ref,
            role,
        )
        return [Device.from_row(r) for r in rows]

    async def count_book(self, book_ref: str, q: Queries | None = None) -> int:
        """Members and pending members: what counts against MAX_DEVICES_PER_BOOK."""
        row = await (q or self.db).fetchrow(
            "SELECT COUNT(*) AS n FROM devices WHERE book_ref = $1 AND revoked_at IS NULL",
            book_ref,
        )
        return int(row["n"]) if row else 0

    async def touch(self, device: Device, now: int) -> None:
        if now - device.last_active_at < TOUCH_INTERVAL_S:
            return
        await self.db.execute(
            "UPDATE devices SET last_active_at = $2 WHERE device_id = $1", device.device_id, now
        )

    async def add_pending(self, device_id: str, book_ref: str, cap: int) -> bool:
        """Make a device in no book a pending member; False when the book is full."""
        async with self.db.transaction() as tx:
            if await self.count_book(book_ref, tx) >= cap:
                return False
            changed = await tx.execute(
                "UPDATE devices SET book_ref = $2, role = $3 WHERE device_id = $1"
                " AND book_ref IS NULL AND revoked_at IS NULL",
                device_id,
                book_ref,
                PENDING,
            )
            if not changed:
                raise ApiError("DEVICE_EXISTS", "This device already belongs to a book.")
            return True

    async def promote(self, device_id: str, book_ref: str) -> bool:
        changed = await self.db.execute(
            "UPDATE devices SET role = $3 WHERE device_id = $1 AND book_ref = $2 AND role = $4",
            device_id,
            book_ref,
            MEMBER,
            PENDING,
        )
        return changed > 0

    async def remove_pending(self, device_id: str, book_ref: str) -> bool:
        """An unconfirmed joiner leaves the book and may pair again."""
        changed = await self.db.execute(
            "UPDATE devices SET book_ref = NULL, role = NULL"
            " WHERE device_id = $1 AND book_ref = $2 AND role = $3",
            device_id,
            book_ref,
            PENDING,
        )
        return changed > 0

    async def revoke(self, device_id: str, book_ref: str, now: int) -> tuple[bool, int]:
        """Revoke a device of the book; returns (revoked, members left)."""
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE devices SET revoked_at = $3 WHERE device_id = $1 AND book_ref = $2"
                " AND revoked_at IS NULL",
                device_id,
                book_ref,
                now,
            )
            row = await tx.fetchrow(
                "SELECT COUNT(*) AS n FROM devices WHERE book_ref = $1 AND role = $2"
                " AND revoked_at IS NULL",
                book_ref,
                MEMBER,
            )
        return changed > 0, int(row["n"]) if row else 0

    async def device_ids_of_book(self, book_ref: str) -> list[str]:
        """Every device tied to the book: members, pending and revoked ones."""
        rows = await self.db.fetch(
            "SELECT device_id FROM devices WHERE book_ref = $1 ORDER BY device_id", book_ref
        )
        return [str(r["device_id"]) for r in rows]

    async def erase_book(self, book_ref: str) -> None:
        """Members' rows go (their keys may register again); revoked rows keep only
        the fact that the key is refused, no longer tied to the book."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "DELETE FROM devices WHERE book_ref = $1 AND revoked_at IS NULL", book_ref
            )
            await tx.execute("UPDATE devices SET book_ref = NULL WHERE book_ref = $1", book_ref)
            await tx.execute("DELETE FROM sync_records WHERE book_ref = $1", book_ref)
            await tx.execute("DELETE FROM books WHERE book_ref = $1", book_ref)


def public_device(device: Device, current_id: str, online: set[str]) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "public_key": device.public_key,
        "last_active_at": rfc3339(device.last_active_at),
        "is_current": device.device_id == current_id,
        "online": device.device_id in online,
    }


def _waiting(
    wanted: dict[str, list[asyncio.Future[Device | None]]],
) -> Iterator[tuple[str, asyncio.Future[Device | None]]]:
    """The waiters of a lookup batch not answered yet, with the device id they asked for."""
    for device_id, futures in wanted.items():
        for future in futures:
            if not future.done():
                yield device_id, future
