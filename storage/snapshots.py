"""Encrypted snapshots of a book: a client's full ledger state as of one seq, so that a
device can catch up without the ops the backlog has dropped.

Domain code: no HTTP here. The server keeps per snapshot `snapshot_id`, `book_ref`,
the `epoch` and `covers_seq` it was made at, `size_bytes`, a status and times; the
bytes are ciphertext it never opens. Object keys are `snapshots/{book_ref}/{id}`.
Completing one trims the backlog through its `covers_seq` (through `infra.backlog`, in
its epoch only) and keeps only the two best snapshots of the book. Implements
`infra.ports.SnapshotIndex` for the relay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from infra.db import Queries, Row
from infra.errors import ApiError, validation
from infra.ports import Backlog, SnapshotRef
from storage.blobs import SignedPut
from storage.uploads import COMPLETE, PENDING, SNAPSHOTS, Kind, Stored, Uploads, new_id

KEEP = 2  # completed snapshots kept per book
_COLUMNS = "snapshot_id, book_ref, epoch, covers_seq, size_bytes, status, created_at, completed_at"


@dataclass(frozen=True)
class Snapshot(Stored):
    kind: ClassVar[Kind] = SNAPSHOTS
    snapshot_id: str
    epoch: str  # the backlog's epoch it was made in
    covers_seq: int  # it holds every op through this seq

    def ref(self) -> SnapshotRef:
        return SnapshotRef(self.snapshot_id, self.epoch, self.covers_seq, self.size_bytes)

    @classmethod
    def from_row(cls, row: Row) -> Snapshot:
        return cls(**row)


def not_found() -> ApiError:
    return ApiError("SNAPSHOT_NOT_FOUND", "No such snapshot.")


def ranked(done: Sequence[Snapshot], epoch: str) -> list[Snapshot]:
    """Completed snapshots, best first: those of the current `epoch` by `covers_seq`,
    then those of the other epochs, the most recently completed epoch first (seqs of
    different epochs name different ops, so they are never compared); ties go to the
    newest. The first is the book's latest; the first `KEEP` are kept."""
    newest: dict[str, tuple[int, int]] = {}
    for s in done:
        at = (s.completed_at or 0, s.created_at)
        newest[s.epoch] = max(newest.get(s.epoch, at), at)

    def rank(s: Snapshot) -> tuple[bool, tuple[int, int], str, int, int, int, str]:
        when = s.completed_at or 0
        return (
            s.epoch == epoch,
            newest[s.epoch],
            s.epoch,
            s.covers_seq,
            when,
            s.created_at,
            s.snapshot_id,
        )

    return sorted(done, key=rank, reverse=True)


class Snapshots:
    def __init__(self, uploads: Uploads, backlog: Callable[[], Backlog]) -> None:
        self.uploads = uploads
        self.db = uploads.db
        self.limits = uploads.limits
        self._backlog = backlog  # read at call time: the relay sets it when wired in

    def check_size(self, size_bytes: int) -> None:
        if size_bytes > self.limits.snapshot_max_bytes:
            raise ApiError(
                "PAYLOAD_TOO_LARGE",
                "The snapshot is larger than allowed.",
                {"limit": self.limits.snapshot_max_bytes},
            )

    async def begin_upload(
        self, book_ref: str, epoch: str, covers_seq: int, size_bytes: int
    ) -> tuple[Snapshot, SignedPut]:
        """A snapshot of the current epoch, covering no op the server has not seen."""
        self.check_size(size_bytes)
        head = await self._backlog().head(book_ref)
        if epoch != head.epoch:
            raise validation("epoch", "is not the book's current epoch")
        if covers_seq > head.latest_seq:
            raise validation("covers_seq", "is beyond the book's latest seq")
        now = self.uploads.now()
        snap = Snapshot(book_ref, size_bytes, PENDING, now, None, new_id(), epoch, covers_seq)
        return snap, await self.uploads.reserve(snap)

    async def find(self, book_ref: str, snapshot_id: str) -> Snapshot | None:
        """A snapshot of this book only: another book's is as absent as a made-up id."""
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM snapshots WHERE snapshot_id = $1 AND book_ref = $2",
            snapshot_id,
            book_ref,
        )
        return Snapshot.from_row(row) if row else None

    async def _completed(self, book_ref: str, q: Queries | None = None) -> list[Snapshot]:
        rows = await (q or self.db).fetch(
            f"SELECT {_COLUMNS} FROM snapshots WHERE book_ref = $1 AND status = $2",
            book_ref,
            COMPLETE,
        )
        return [Snapshot.from_row(r) for r in rows]

    async def complete(self, book_ref: str, snapshot_id: str) -> Snapshot:
        """Check the object, mark it complete, drop what falls out of the best `KEEP`,
        then trim the backlog through it. Repeated: the same answer (and the same trim,
        which changes nothing the second time)."""
        snap = await self.find(book_ref, snapshot_id)
        if snap is None:
            raise not_found()
        if snap.status != COMPLETE:
            await self.uploads.check_object(snap.key, snap.size_bytes)
        backlog = self._backlog()
        epoch = (await backlog.head(book_ref)).epoch
        now = self.uploads.now()
        # One book's completions one at a time: two devices finishing together leave
        # one ranking, so one latest and the same two kept.
        async with self.db.transaction() as tx:
            await self.uploads.lock_book(tx, book_ref)
            await tx.execute(
                "UPDATE snapshots SET status = $2, completed_at = $3"
                " WHERE snapshot_id = $1 AND status = $4",
                snap.snapshot_id,
                COMPLETE,
                now,
                PENDING,
            )
            order = ranked(await self._completed(book_ref, tx), epoch)
            for old in order[KEEP:]:
                await tx.execute("DELETE FROM snapshots WHERE snapshot_id = $1", old.snapshot_id)
                await self.uploads.delete_late(tx, old.key, old.created_at, now=True)
        done = next((s for s in order if s.snapshot_id == snap.snapshot_id), None)
        for old in order[KEEP:]:
            await self.uploads.drain_deletions(only=old.key)
        if done is None:  # swept meanwhile
            raise not_found()
        if done in order[:KEEP]:
            await backlog.trim_through(book_ref, done.epoch, done.covers_seq)
        return done

    async def latest(self, book_ref: str, epoch: str) -> SnapshotRef | None:
        order = ranked(await self._completed(book_ref), epoch)
        return order[0].ref() if order else None

    async def download(self, book_ref: str) -> tuple[Snapshot, str]:
        """The book's latest snapshot and a GET URL for it."""
        epoch = (await self._backlog().head(book_ref)).epoch
        order = ranked(await self._completed(book_ref), epoch)
        if not order:
            raise not_found()
        return order[0], await self.uploads.presign_get(order[0].key)
