"""The household ledger as a Yjs document (pycrdt): local edits become CRDT updates.

Updates are what the relay carries, after `crypto.seal`; applying the same update twice,
or updates in any order, converges to the same ledger. Never talks to the network.

Document layout (what an app in another language must use to interoperate):
    Map "entries":     entry_id -> {"amount_cents": int, "currency": str, "note": str,
                                    "by": device_id, "at_ms": unix milliseconds}
    Map "attachments": entry_id -> photo_id   (its own map, so attaching a photo never
                                               overwrites a concurrent edit of the entry)

Op plaintext (inside the ciphertext): one kind byte ‖ a Yjs update (v1 encoding).
    0x01 update         an incremental update
    0x02 state request  this device's full state, and "send me yours" (after a sync_gap)
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map

KIND_UPDATE = 0x01
KIND_STATE_REQUEST = 0x02


def encode_op(kind: int, update: bytes) -> bytes:
    return bytes([kind]) + update


def decode_op(plaintext: bytes) -> tuple[int, bytes]:
    if len(plaintext) < 1 or plaintext[0] not in (KIND_UPDATE, KIND_STATE_REQUEST):
        raise ValueError("unknown op kind")
    return plaintext[0], plaintext[1:]


@dataclass(frozen=True)
class Entry:
    entry_id: str
    amount_cents: int
    currency: str
    note: str
    by: str
    at_ms: int
    photo_id: str | None

    def line(self) -> str:
        sign = "-" if self.amount_cents < 0 else "+"
        whole, cents = divmod(abs(self.amount_cents), 100)
        photo = "  [photo]" if self.photo_id else ""
        amount = f"{sign}{whole}.{cents:02d} {self.currency}"
        return f"{amount:>14}  {self.note:<28} by {self.by[:8]}{photo}"


class Ledger:
    def __init__(self) -> None:
        self.doc: Doc[Any] = Doc()
        self._entries: Map[Any] = self.doc.get("entries", type=Map)
        self._attachments: Map[Any] = self.doc.get("attachments", type=Map)

    def _change(self, edit: Any) -> bytes:
        """Run `edit` in one transaction and return exactly the update it made."""
        before = self.doc.get_state()
        with self.doc.transaction():
            edit()
        return bytes(self.doc.get_update(before))

    def add_entry(
        self,
        amount_cents: int,
        note: str,
        by: str,
        currency: str = "EUR",
        at_ms: int | None = None,
    ) -> tuple[str, bytes]:
        entry_id = uuid.uuid4().hex
        value = {
            "amount_cents": amount_cents,
            "currency": currency,
            "note": note,
            "by": by,
            "at_ms": int(time.time() * 1000) if at_ms is None else at_ms,
        }
        return entry_id, self._change(lambda: self._entries.__setitem__(entry_id, value))

    def attach_photo(self, entry_id: str, photo_id: str) -> bytes:
        if entry_id not in self._entries:
            raise KeyError(entry_id)
        return self._change(lambda: self._attachments.__setitem__(entry_id, photo_id))

    def apply(self, update: bytes) -> None:
        self.doc.apply_update(update)

    def full_state(self) -> bytes:
        """Everything this device knows, as one update (for a peer or a snapshot)."""
        return bytes(self.doc.get_update())

    def entries(self) -> list[Entry]:
        """Every entry as a frozen `Entry` (amount_cents and at_ms as int, photo_id or
        None), sorted by `at_ms` then `entry_id`: the same list on every device."""
        raw = self._entries.to_py() or {}
        photos = self._attachments.to_py() or {}
        out = [
            Entry(
                entry_id=key,
                # Yjs stores JSON numbers as doubles: cents are whole by construction.
                amount_cents=int(value.get("amount_cents", 0)),
                currency=str(value.get("currency", "")),
                note=str(value.get("note", "")),
                by=str(value.get("by", "")),
                at_ms=int(value.get("at_ms", 0)),
                photo_id=photos.get(key),
            )
            for key, value in raw.items()
            if isinstance(value, dict)
        ]
        # Time of entry, then id: every device lists the same ledger in the same order.
        return sorted(out, key=lambda e: (e.at_ms, e.entry_id))

    def balance_cents(self) -> int:
        return sum(e.amount_cents for e in self.entries())
