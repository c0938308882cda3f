"""What a device remembers between runs: its book, its book key, its sync position, its
ledger and its offline queue (ops not yet acked).

Kept in one owner-only (0600) JSON file written atomically. It holds the book key, so it
is as secret as the device key; it never leaves the device.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PendingOp:
    """An op sent (or to be sent) until the server acks its `id`: retries reuse the id,
    so the server acks a duplicate with the first seq and does not relay it twice."""

    op_id: str
    payload_b64: str
    timestamp: int


@dataclass
class Position:
    """contract §4: the highest N such that every seq ≤ N was received or acked, per epoch."""

    epoch: str | None = None
    seq: int = 0
    ahead: set[int] = field(default_factory=set)

    def mark(self, seq: int) -> None:
        if seq <= self.seq:
            return
        self.ahead.add(seq)
        while self.seq + 1 in self.ahead:
            self.seq += 1
            self.ahead.discard(self.seq)

    def restart(self, epoch: str, resume_seq: int) -> None:
        """After a sync_gap: the ops after `resume_seq` follow; anything older is either
        in a snapshot or must come from a peer."""
        self.epoch = epoch
        self.seq = resume_seq
        self.ahead = {s for s in self.ahead if s > resume_seq}
        self.mark(resume_seq)


@dataclass
class DeviceState:
    book_id: str | None = None
    book_key_b64: str | None = None
    position: Position = field(default_factory=Position)
    ledger_b64: str = ""
    outbox: OrderedDict[str, PendingOp] = field(default_factory=OrderedDict)

    def to_json(self) -> dict[str, Any]:
        return {
            "book_id": self.book_id,
            "book_key": self.book_key_b64,
            "epoch": self.position.epoch,
            "position": self.position.seq,
            "ledger": self.ledger_b64,
            "outbox": [[p.op_id, p.payload_b64, p.timestamp] for p in self.outbox.values()],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DeviceState:
        state = cls(book_id=raw.get("book_id"), book_key_b64=raw.get("book_key"))
        state.position = Position(epoch=raw.get("epoch"), seq=int(raw.get("position", 0)))
        state.ledger_b64 = str(raw.get("ledger", ""))
        for op_id, payload, ts in raw.get("outbox", []):
            state.outbox[op_id] = PendingOp(op_id, payload, int(ts))
        return state


def load(path: Path) -> DeviceState:
    if not path.exists():
        return DeviceState()
    return DeviceState.from_json(json.loads(path.read_text()))


def save(path: Path, state: DeviceState) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(state.to_json(), out)
    os.replace(tmp, path)
