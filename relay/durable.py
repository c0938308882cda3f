"""The embedded broker's backlog on disk: seq counters, epochs, retained ops and client
op ids in one SQLite file in the data dir, so a restart, clean or crash, keeps every
acked op under the same epoch.

Runs on the event loop's thread, one transaction per batch of appends (all appends of
a loop turn): a second thread would only add hand-offs and a contended GIL. What a
commit writes is kept small, since SQLite writes whole pages: a book's new ops of a
batch go in one row (a "chunk"), rows are appended in order (no index to update: each
book's list of its chunks, 24 bytes a chunk, and a running byte count per op, 8 bytes
an op, are kept in memory, so trimming reads nothing), and client ids are appended to
a log, one row per batch, and looked up in memory (read back from the log at start).

Durability: a rollback journal (kept, its header zeroed after each commit) with
`synchronous=OFF`. A commit is in the OS's page cache before the ack, which is all
that a crash or `kill -9` of the process can lose: a transaction cut short is rolled
back from the journal at the next open. Only a crash of the machine itself can lose or
tear recent writes. That is detected on open (the last run did not close cleanly and
the machine has booted since), and the file is then replaced: every book starts a new
epoch rather than serve a history that may have rolled back. A deleted or replaced
file is a new store, so new epochs too.

Why a rollback journal and not WAL: the ops are appended, and pages past the end of the
file need no journal, so each op's bytes are written once. WAL writes every page twice
(the log, then the checkpoint): at saturation the relay delivered 5-20% less with it.
The file is locked for the process's life (`locking_mode=EXCLUSIVE`): one server per
data dir, and a second one refuses to start rather than hand out the same seqs.

Never decodes, parses or logs a payload; the file holds `book_ref`, device ids, client
op ids, times, sizes and the forwarded op's JSON (ciphertext payload) only.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import sqlite3
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from relay.broker import (
    IDEMPOTENCY_TTL_S,
    Appended,
    BacklogLimits,
    Head,
    NewOp,
    id_key,
    new_epoch,
    op_line,
)

log = logging.getLogger("homepocket.relay")

FILE_NAME = "backlog.sqlite3"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# Over the total bound, books are trimmed this much further below it, so the search
# for the biggest books runs once per this many bytes of appends, not on every one.
TOTAL_SLACK_SHARE = 64
ID_MARK_S = 10  # the id log's stretches between marks, in seconds of relay time
DELETE_SLICE = 10_000  # chunk ids per DELETE (SQLite bounds a statement's parameters)
# The journal holds the old content of the pages a transaction changed: appends need
# little; a large trim or erasure more, which is given back beyond this.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
# A server restarted in place may start while the old process is still exiting.
LOCK_WAIT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS books (
    no          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    book_ref    TEXT NOT NULL UNIQUE, -- HMAC of the book id, never the id
    epoch       TEXT NOT NULL,
    oldest      INTEGER NOT NULL,     -- oldest retained seq
    trimmed     INTEGER NOT NULL      -- bytes of the ops trimmed away
);
-- A book's new ops of one batch, consecutive seqs, in one row, appended in order.
-- A book's seq and byte count are those of its last chunk (its books row when none).
CREATE TABLE IF NOT EXISTS chunks (
    id          INTEGER PRIMARY KEY,
    book_no     INTEGER NOT NULL,
    last        INTEGER NOT NULL,     -- seq of its last op; its first follows the
                                      -- book's previous chunk
    at          INTEGER NOT NULL,     -- relay time of its newest op, Unix seconds
    cum         INTEGER NOT NULL,     -- the book's bytes of ops, this chunk's included
    tails       TEXT NOT NULL         -- each op's JSON after its seq, one per line
);
-- Client op ids of one batch: "book_no device_id seq relay_at client_id" lines.
CREATE TABLE IF NOT EXISTS id_log (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    entries     TEXT NOT NULL
);
"""


@dataclass(slots=True)
class BookState:
    """A book's head, and where its retained ops are in the file."""

    no: int
    book_ref: str
    epoch: str
    seq: int = 0
    oldest: int = 1
    cum: int = 0  # bytes of every op of this epoch
    trimmed: int = 0  # bytes of the ops trimmed away
    oldest_at: int = 0  # relay time of the oldest retained op's chunk (0: none)
    # Its chunks still in the file, oldest first, from `lo` on: last seq, row id, time.
    lasts: array[int] = field(default_factory=lambda: array("q"))
    rows: array[int] = field(default_factory=lambda: array("q"))
    ats: array[int] = field(default_factory=lambda: array("q"))
    lo: int = 0
    # The book's byte count after each retained op, from seq `first_cum` on (8 bytes an
    # op): trimming by count, bytes or age needs no read of the file.
    cums: array[int] = field(default_factory=lambda: array("q"))
    first_cum: int = 1
    # Client op ids, oldest first: `id_key` -> `pack_id` (see there).
    ids: dict[str, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.cum - self.trimmed

    def head(self) -> Head:
        return Head(self.epoch, self.seq, self.oldest, self.bytes)

    def row(self) -> tuple[str, int, int, int]:
        return (self.epoch, self.oldest, self.trimmed, self.no)

    def saved(self) -> tuple[int, int, int, int, int, int, int]:
        return (
            self.seq,
            self.oldest,
            self.cum,
            self.trimmed,
            self.oldest_at,
            len(self.lasts),
            len(self.cums),
        )

    def restore(self, saved: tuple[int, int, int, int, int, int, int]) -> None:
        self.seq, self.oldest, self.cum, self.trimmed, self.oldest_at, chunks, ops = saved
        del self.lasts[chunks:]
        del self.rows[chunks:]
        del self.ats[chunks:]
        del self.cums[ops:]

    def chunk_index(self, seq: int) -> int:
        """Where in `lasts` the chunk holding `seq` is (len(lasts) when none)."""
        return bisect.bisect_left(self.lasts, seq, self.lo)

    def before(self, seq: int) -> int:
        """The book's byte count before op `seq` (`seq` from `oldest` to `seq + 1`)."""
        if seq <= self.oldest:
            return self.trimmed
        return self.cums[seq - 1 - self.first_cum]

    def first_from(self, floor: int) -> int:
        """The first op whose bytes before it are at least `floor`: keeping it and what
        follows keeps `cum - floor` bytes or fewer (`seq + 1`: none)."""
        if self.trimmed >= floor:
            return self.oldest
        at = bisect.bisect_left(self.cums, floor, max(0, self.oldest - self.first_cum))
        return self.first_cum + at + 1

    def first_younger(self, cutoff: int) -> int:
        """The first op of the first chunk written after `cutoff` (`seq + 1`: none)."""
        i = bisect.bisect_right(self.ats, cutoff, self.lo)
        if i >= len(self.lasts):
            return self.seq + 1
        return self.oldest if i == self.lo else max(self.oldest, self.lasts[i - 1] + 1)

    def forget(self, keep: int, first: int) -> None:
        """The chunks before index `keep` are gone from the file, and the ops before
        `first` from the backlog."""
        self.lo = keep
        if self.lo > 64 and self.lo * 2 > len(self.lasts):  # shrink now and then
            del self.lasts[: self.lo]
            del self.rows[: self.lo]
            del self.ats[: self.lo]
            self.lo = 0
        drop = first - 1 - self.first_cum  # keep the cum of the op before `first`
        if drop > 64 and drop * 2 > len(self.cums):
            del self.cums[:drop]
            self.first_cum += drop


class StoreError(Exception):
    """The backlog file failed (disk full, I/O error): the batch was not kept."""


class BacklogInUse(Exception):
    """Another process holds the backlog file: one server per data dir."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is in use by another process; one server per data dir")


def check_free(path: Path) -> None:
    """BacklogInUse when another process holds the file (a second server on the same
    data dir); waits for the lock as `open` does. Changes nothing a start would not, and
    leaves any other trouble with the file (unreadable: new epochs) to `open`."""
    if not path.exists():
        return
    db = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")  # a write lock: refused while another holds it
        db.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            raise BacklogInUse(str(path)) from None
    finally:
        db.close()


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:  # not Linux: no way to tell a machine crash from a process crash
        return ""


Batch = list[tuple[str, NewOp, str]]  # (book_ref, op, the op's JSON after its seq)

# A day of client op ids is held in memory, one str and one int an id in a plain dict:
# about 170 bytes, where a tuple key and a tuple value took 310, and a dict of only str
# and int is one the garbage collector never walks. Relay times are Unix seconds,
# below 2**32 until 2106.
_AT_BITS = 32
_AT_MASK = (1 << _AT_BITS) - 1


def pack_id(seq: int, at: int) -> int:
    return seq << _AT_BITS | at


def unpack_id(packed: int) -> tuple[int, int]:
    """(seq, relay time) of a packed id."""
    return packed >> _AT_BITS, packed & _AT_MASK


class DurableBacklog:
    def __init__(self, path: Path, limits: BacklogLimits) -> None:
        self.path = path
        self.limits = limits
        self.books: dict[str, BookState] = {}
        self.total = 0  # retained bytes of every book
        self._by_no: dict[int, BookState] = {}
        self._db: sqlite3.Connection | None = None
        self._next_row = 1  # chunks' row ids are handed out here, in append order
        self._doomed: list[int] = []  # chunks to delete with this transaction
        # (at, last id_log row by then), one per ID_MARK_S of relay time: forgetting old
        # client ids deletes a range of rows by id rather than scanning the whole log.
        self._id_marks: deque[tuple[int, int]] = deque()

    # Lifecycle.
    def open(self, now: int | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
            if self._maybe_torn(db):
                log.warning("backlog may have lost writes in a machine crash; new epochs")
                db.close()
                self._remove_files()
                db = self._connect()
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise BacklogInUse(str(self.path)) from None  # never remove a live file
            log.warning("backlog file unreadable; new epochs", extra={"error": str(exc)})
            self._remove_files()
            db = self._connect()
        self._db = db
        self._mark_running(db)
        self._load(db, int(time.time()) if now is None else now)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=LOCK_WAIT_S, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        # Also turns a file of an earlier version out of WAL, its log applied first.
        db.execute("PRAGMA journal_mode=PERSIST")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        db.execute("PRAGMA synchronous=OFF")
        # Trimmed ops leave their pages to the free list, unzeroed: where SQLite is built
        # with SECURE_DELETE (Debian's is), zeroing them wrote each op 2.6 times over
        # at a book's bound. FAST still zeroes what is on a page written anyway.
        db.execute("PRAGMA secure_delete=FAST")
        db.executescript(_SCHEMA)
        return db

    def _maybe_torn(self, db: sqlite3.Connection) -> bool:
        """The last run did not close cleanly and the machine restarted since: writes
        that had reached only the OS's cache may be gone."""
        rows = dict(db.execute("SELECT key, value FROM store").fetchall())
        if not rows:
            return False  # a new file
        return rows.get("clean") != "1" and (rows.get("boot") != boot_id() or not boot_id())

    def _remove_files(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()

    def _mark_running(self, db: sqlite3.Connection) -> None:
        """On disk before the first ack: this run has not closed cleanly (yet)."""
        db.execute("PRAGMA synchronous=FULL")
        db.executemany(
            "INSERT OR REPLACE INTO store (key, value) VALUES (?, ?)",
            [("clean", "0"), ("boot", boot_id())],
        )
        db.execute("PRAGMA synchronous=OFF")

    def _load(self, db: sqlite3.Connection, now: int) -> None:
        for no, book_ref, epoch, oldest, trimmed in db.execute(
            "SELECT no, book_ref, epoch, oldest, trimmed FROM books"
        ).fetchall():
            book = BookState(no, book_ref, epoch, oldest - 1, oldest, trimmed, trimmed)
            self.books[book_ref] = self._by_no[no] = book
        # Chunks in append order: each book's last one gives its seq and byte count, and
        # each op's size rebuilds the book's byte counts.
        for row, no, last, at, cum, tails in db.execute(
            "SELECT id, book_no, last, at, cum, tails FROM chunks ORDER BY id"
        ):
            book = self._by_no[no]
            sizes = [len(tail) for tail in tails.split("\n")]
            if not book.lasts:
                book.oldest_at = at
                book.first_cum = last - len(sizes) + 1
                running = cum - sum(sizes)
            else:
                running = book.cums[-1]
            for size in sizes:
                running += size
                book.cums.append(running)
            book.lasts.append(last)
            book.rows.append(row)
            book.ats.append(at)
            book.seq, book.cum = last, cum
            self._next_row = row + 1
        for book in self.books.values():
            self.total += book.bytes
        horizon = now - IDEMPOTENCY_TTL_S
        (old,) = db.execute("SELECT max(id) FROM id_log WHERE at <= ?", (horizon,)).fetchone()
        if old is not None:
            self._id_marks.append((horizon, old))
        for row, at_, entries in db.execute(
            "SELECT id, at, entries FROM id_log WHERE at > ? ORDER BY id", (horizon,)
        ):
            self._mark_ids(at_, row)
            for line in entries.split("\n"):
                no, device, seq, at, client = line.split(" ", 4)
                known = self._by_no.get(int(no))
                if known is not None:
                    known.ids[id_key(device, client)] = pack_id(int(seq), int(at))

    def close(self) -> None:
        """A clean close: everything on disk, and marked so; the journal (old page
        images) goes with it."""
        db, self._db = self._db, None
        if db is None:
            return
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("INSERT OR REPLACE INTO store (key, value) VALUES ('clean', '1')")
            db.execute("PRAGMA journal_mode=DELETE")
        finally:
            db.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the backlog is closed")
        return self._db

    # Books.
    def book(self, book_ref: str) -> BookState:
        book = self.books.get(book_ref)
        if book is None:
            epoch = new_epoch()
            cursor = self.db.execute(
                "INSERT INTO books (book_ref, epoch, oldest, trimmed) VALUES (?, ?, 1, 0)",
                (book_ref, epoch),
            )
            book = BookState(int(cursor.lastrowid or 0), book_ref, epoch)
            self.books[book_ref] = self._by_no[book.no] = book
        return book

    def drop(self, book_ref: str) -> None:
        """Erasure: its ops, counters and client ids are gone; a later book of the same
        id starts afresh with a new epoch. (Its lines in the id log name a book number
        never used again, and expire with the log.)"""
        book = self.books.pop(book_ref, None)
        if book is None:
            return
        del self._by_no[book.no]
        self.total -= book.bytes
        db = self.db
        db.execute("PRAGMA secure_delete=ON")  # an erased book's pages are zeroed
        try:
            with self._transaction():
                self._doomed.extend(book.rows[book.lo :])  # its chunks, by id (no scan)
                db.execute("DELETE FROM books WHERE no = ?", (book.no,))
        finally:
            db.execute("PRAGMA secure_delete=FAST")

    # Appends.
    def append(self, batch: Batch, now: int) -> list[Appended]:
        """Keep a batch in one transaction, committed before this returns; answers in
        order. On failure nothing of the batch is kept."""
        books = {ref: self.book(ref) for ref, _, _ in batch}
        saved = {ref: b.saved() for ref, b in books.items()}
        total = self.total
        try:
            with self._transaction():
                results, lines, fresh = self._number(batch, books)
                self._write_chunks(batch, results, books, now)
                if lines:
                    row = self.db.execute(
                        "INSERT INTO id_log (at, entries) VALUES (?, ?)",
                        (now, "\n".join(lines)),
                    ).lastrowid
                    self._mark_ids(now, row)
                moved = self._trim(books.values(), now)
                moved += [b for ref, b in books.items() if b.oldest != saved[ref][1]]
                self.db.executemany(
                    _UPDATE_HEAD, [b.row() for b in {b.no: b for b in moved}.values()]
                )
        except sqlite3.Error as exc:
            for ref, book in books.items():
                book.restore(saved[ref])
            self.total = total
            raise StoreError(type(exc).__name__) from None
        for (ref, key), packed in fresh.items():
            books[ref].ids[key] = packed
        return results

    def _number(
        self, batch: Batch, books: dict[str, BookState]
    ) -> tuple[list[Appended], list[str], dict[tuple[str, str], int]]:
        """Each op's seq, or the first seq of a retried client id; the id log's lines;
        the ids first seen in this batch ((book_ref, `id_key`) -> `pack_id`), which the
        book remembers once they are committed."""
        results: list[Appended] = []
        lines: list[str] = []
        fresh: dict[tuple[str, str], int] = {}
        for ref, op, tail in batch:
            book = books[ref]
            cid = op.client_id
            if cid is not None:
                key = id_key(op.device_id, cid)
                prior = book.ids.get(key)
                if prior is None:
                    prior = fresh.get((ref, key))
                if prior is not None:
                    results.append(Appended(*unpack_id(prior), True))
                    continue
            seq = self._take_seq(book, len(tail))
            results.append(Appended(seq, op.now, False))
            if cid is not None:
                fresh[(ref, key)] = pack_id(seq, op.now)
                lines.append(f"{book.no} {op.device_id} {seq} {op.now} {cid}")
        return results, lines, fresh

    def _take_seq(self, book: BookState, size: int) -> int:
        book.seq += 1
        if self.limits.max_ops > 0:
            book.cum += size
            book.cums.append(book.cum)
            self.total += size
        else:  # a pure relay keeps nothing
            book.oldest = book.seq + 1
            book.trimmed = book.cum
        return book.seq

    def _write_chunks(
        self, batch: Batch, results: list[Appended], books: dict[str, BookState], now: int
    ) -> None:
        """One row per book: its new ops of the batch."""
        if self.limits.max_ops <= 0:
            return
        tails: dict[str, list[str]] = {}
        for (ref, _, tail), result in zip(batch, results, strict=True):
            if not result.duplicate:
                tails.setdefault(ref, []).append(tail)
        rows = []
        for ref, mine in tails.items():
            book = books[ref]
            row = self._next_row
            self._next_row += 1
            rows.append((row, book.no, book.seq, now, book.cum, "\n".join(mine)))
            if book.oldest_at == 0:
                book.oldest_at = now
            book.lasts.append(book.seq)
            book.rows.append(row)
            book.ats.append(now)
        self.db.executemany(
            "INSERT INTO chunks (id, book_no, last, at, cum, tails) VALUES (?, ?, ?, ?, ?, ?)", rows
        )

    # Reads.
    def head(self, book_ref: str, now: int) -> Head:
        book = self.book(book_ref)
        if book.oldest_at and book.oldest_at <= now - self.limits.max_age_s:
            with self._transaction():
                self._trim_book(book, now)
                self.db.execute(_UPDATE_HEAD, book.row())
        return book.head()

    def read(self, book_ref: str, after: int, through: int) -> list[str]:
        """The forwarded-op lines of seqs after..through (those still retained)."""
        book = self.books.get(book_ref)
        if book is None:
            return []
        after = max(after, book.oldest - 1)
        through = min(through, book.seq)
        if through <= after:
            return []
        start, end = book.chunk_index(after + 1), book.chunk_index(through)
        rows = book.rows[start : end + 1]
        texts = dict(
            self.db.execute(
                f"SELECT id, tails FROM chunks WHERE id IN ({','.join('?' * len(rows))})",
                rows,
            ).fetchall()
        )
        lines: list[str] = []
        for i in range(start, end + 1):
            tails = texts[book.rows[i]].split("\n")
            for seq, tail in enumerate(tails, book.lasts[i] - len(tails) + 1):
                if after < seq <= through:
                    lines.append(op_line(seq, tail))
        return lines

    # Trimming.
    def _trim(self, books: Iterable[BookState], now: int) -> list[BookState]:
        """The touched books' limits, then the total's; the books whose oldest moved."""
        moved = [b for b in books if self._trim_book(b, now)]
        lim = self.limits
        if self.total > lim.max_total_bytes:
            moved += self._trim_total(
                lim.max_total_bytes - lim.max_total_bytes // TOTAL_SLACK_SHARE
            )
        return moved

    def _trim_book(self, book: BookState, now: int) -> bool:
        """The oldest ops past the book's limits of count, bytes and age go."""
        lim = self.limits
        first = max(book.oldest, book.seq - lim.max_ops + 1)  # the first op kept
        if book.cum - book.before(first) > lim.max_bytes:
            first = max(first, book.first_from(book.cum - lim.max_bytes))
        if book.oldest_at and book.oldest_at <= now - lim.max_age_s:
            first = max(first, book.first_younger(now - lim.max_age_s))
        return self._trim_before(book, min(first, book.seq + 1))

    def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        """Ops up to `seq` go (a snapshot covers them), if `epoch` is still current."""
        book = self.books.get(book_ref)
        if book is None or book.epoch != epoch:
            return
        with self._transaction():
            if self._trim_before(book, min(seq, book.seq) + 1):
                self.db.execute(_UPDATE_HEAD, book.row())

    def _trim_total(self, target: int) -> list[BookState]:
        """The whole backlog over its bound: the books holding the most give up their
        oldest ops first, down to a common level, until the total is at `target`."""
        sizes = sorted((b.bytes for b in self.books.values() if b.bytes > 0), reverse=True)
        excess = self.total - target
        level, held = 0, 0
        for k, size in enumerate(sizes):
            held += size
            below = sizes[k + 1] if k + 1 < len(sizes) else 0
            if held - (k + 1) * below >= excess:
                level = (held - excess) // (k + 1)
                break
        moved = []
        for book in [b for b in self.books.values() if b.bytes > level]:
            if self._trim_before(book, min(book.first_from(book.cum - level), book.seq + 1)):
                moved.append(book)
        return moved

    def _trim_before(self, book: BookState, first: int) -> bool:
        """Drop the ops before seq `first` (whole chunks; a chunk's older ops are only
        skipped until the rest of it goes too). True when anything went."""
        if first <= book.oldest:
            return False
        trimmed = book.before(first)
        keep = book.chunk_index(first)  # the chunk holding `first`, kept
        if keep > book.lo:
            self._doomed.extend(book.rows[book.lo : keep])  # deleted with the commit
        self.total -= trimmed - book.trimmed
        book.trimmed = trimmed
        book.oldest = first
        book.oldest_at = book.ats[keep] if first <= book.seq else 0
        book.forget(keep, first)
        return True

    # Upkeep.
    def forget_old_ids(self, now: int) -> None:
        """Client ids older than 24 h go, from memory and from the log."""
        horizon = now - IDEMPOTENCY_TTL_S
        for book in self.books.values():
            ids = book.ids
            gone = []
            for key, packed in ids.items():
                if packed & _AT_MASK > horizon:
                    break
                gone.append(key)
            for key in gone:
                del ids[key]
        through = None
        marks = self._id_marks
        while marks and marks[0][0] <= horizon:
            through = marks.popleft()[1]
        if through is None:
            return
        # Rows by id up to the last one written by the horizon: the log is appended in
        # time order, so this reads only what goes (a scan of a day's log held the loop
        # longer every 10 s); `at` still decides, should the clock have stepped back.
        with self._transaction():
            self.db.execute("DELETE FROM id_log WHERE id <= ? AND at <= ?", (through, horizon))

    def _mark_ids(self, at: int, row: int | None) -> None:
        """Row `row` of the id log was written at `at`: extend the stretch or start one."""
        marks = self._id_marks
        if row is None:
            return
        if marks and at < marks[-1][0] + ID_MARK_S:
            marks[-1] = (marks[-1][0], row)
        else:
            marks.append((at, row))

    def trim_aged(self, now: int) -> None:
        """Books nobody writes to or reads still lose their ops past the age limit."""
        cutoff = now - self.limits.max_age_s
        for book in [b for b in self.books.values() if b.oldest_at and b.oldest_at <= cutoff]:
            self.head(book.book_ref, now)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction; the chunks trimmed meanwhile are deleted in it, at once."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            doomed, self._doomed = self._doomed, []
            for at in range(0, len(doomed), DELETE_SLICE):
                part = doomed[at : at + DELETE_SLICE]
                db.execute(f"DELETE FROM chunks WHERE id IN ({','.join('?' * len(part))})", part)
        except BaseException:
            self._doomed = []
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


_UPDATE_HEAD = "UPDATE books SET epoch = ?, oldest = ?, trimmed = ? WHERE no = ?"
