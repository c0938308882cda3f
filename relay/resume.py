"""Where a resuming device starts: the backlog after its position, or, on a gap, after the
resume point, with the snapshot that fills the hole when there is one.

One rule for the socket's replay and for `GET ops`, over either broker. The snapshot is
looked up only when the read is a gap, so a normal resume reads no database. Never
sees a payload; only `book_ref`.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.ports import SnapshotIndex, SnapshotRef
from relay.broker import Broker, Head, History

# A re-read after the resume point moved can meet a new gap (ops trimmed or the epoch
# changed meanwhile): try again a few times, then answer without a snapshot.
ATTEMPTS = 3


@dataclass(frozen=True)
class Resumed:
    history: History  # on a gap, `start` is the resume point
    snapshot: SnapshotRef | None  # offered with a gap only

    def gap_fields(self) -> dict[str, object] | None:
        """`{resume_seq, snapshot?}` for a gap, None otherwise."""
        if not self.history.gap:
            return None
        out: dict[str, object] = {"resume_seq": self.history.start}
        if self.snapshot is not None:
            out["snapshot"] = {
                "snapshot_id": self.snapshot.snapshot_id,
                "epoch": self.snapshot.epoch,
                "covers_seq": self.snapshot.covers_seq,
            }
        return out


def resume_point(head: Head, snap: SnapshotRef | None) -> tuple[int, SnapshotRef | None]:
    """After a gap: the snapshot's `covers_seq` when it was made in the current epoch and
    leaves no hole before the backlog (`covers_seq >= oldest_seq - 1`), else
    `oldest_seq - 1`.

    A snapshot of another epoch (the book's history was lost or rolled back since) is
    still offered when the current epoch's backlog is whole from seq 1: the device loads
    it and replays the new epoch from its start, and CRDT updates are idempotent, so the
    overlap is harmless. When the new epoch's first ops are gone too, nothing joins the
    two, and the gap comes without a snapshot.
    """
    start = head.oldest_seq - 1
    if snap is None:
        return start, None
    if snap.epoch == head.epoch:
        if start <= snap.covers_seq <= head.latest_seq:
            return snap.covers_seq, snap
        return start, None
    if head.oldest_seq == 1:
        return 0, snap
    return start, None


async def read(
    broker: Broker,
    snapshots: SnapshotIndex,
    book_ref: str,
    since: int,
    epoch: str | None,
    limit: int,
) -> Resumed:
    """Up to `limit` ops after `since`; on a gap, after the resume point instead."""
    history = await broker.history(book_ref, since, epoch, limit)
    for _ in range(ATTEMPTS):
        if not history.gap:
            return Resumed(history, None)
        head = history.head
        start, snap = resume_point(head, await snapshots.latest(book_ref, head.epoch))
        if start == history.start:
            return Resumed(history, snap)
        after = await broker.history(book_ref, start, head.epoch, limit)
        if not after.gap:
            return Resumed(History(after.head, start, True, after.lines), snap)
        history = after  # the book moved on meanwhile: start over from what it is now
    return Resumed(history, None)
