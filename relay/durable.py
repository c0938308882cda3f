"""The embedded broker's backlog on disk: seq counters, epochs, retained ops and client
op ids in one SQLite file in the data dir, so a restart, clean or crash, keeps every
acked op under the same epoch.

Runs on the event loop's thread, one transaction per batch of appends (all appends of
a loop turn): SQLite commits a batch in tens of microseconds, and a second thread would
only add hand-offs and a contended GIL. Only the per-book heads live in memory (a few
numbers per book); the ops are read back from the file.

Durability: WAL with `synchronous=OFF`. A commit is in the OS's page cache before the
ack, which is all that a crash or `kill -9` of the process can lose; only a crash of the
machine itself can lose or tear recent writes. That is detected on open (the last run
did not close cleanly and the machine has booted since), and the file is then
replaced: every book starts a new epoch rather than serve a history that may have
rolled back. A deleted or replaced file is a new store, so new epochs too.

Never decodes, parses or logs a payload; the file holds `book_ref`, device ids, client
op ids, times, sizes and the forwarded op's JSON (ciphertext payload) only.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from relay.broker import (
    IDEMPOTENCY_TTL_S,
    Appended,
    BacklogLimits,
    Head,
    NewOp,
    new_epoch,
    op_line,
)

log = logging.getLogger("homepocket.relay")

FILE_NAME = "backlog.sqlite3"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
SEQ_BITS = 40  # an op's row id is its book's number << SEQ_BITS | seq
SEQ_MASK = (1 << SEQ_BITS) - 1
ID_EXPIRY_CHUNK = 2000  # client ids forgotten per pass (bounds one pass's pause)
# Over the total bound, books are trimmed this much further below it, so the search
# for the biggest books runs once per this many bytes of appends, not on every one.
TOTAL_SLACK_SHARE = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS books (
    no          INTEGER PRIMARY KEY,  -- the high bits of its ops' row ids
    book_ref    TEXT NOT NULL UNIQUE, -- HMAC of the book id, never the id
    epoch       TEXT NOT NULL,
    seq         INTEGER NOT NULL,     -- latest seq (0: no op yet)
    oldest      INTEGER NOT NULL,     -- oldest retained seq (seq + 1: none)
    cum         INTEGER NOT NULL,     -- bytes of every op of this epoch
    trimmed     INTEGER NOT NULL      -- bytes of the ops trimmed away
);
CREATE TABLE IF NOT EXISTS ops (
    id          INTEGER PRIMARY KEY,  -- book no << 40 | seq
    at          INTEGER NOT NULL,     -- relay time, Unix seconds
    before      INTEGER NOT NULL,     -- the book's `cum` before this op
    tail        TEXT NOT NULL         -- the forwarded op's JSON after its seq
);
CREATE TABLE IF NOT EXISTS op_ids (   -- client op ids, remembered 24 h; rowid in time order
    book_no     INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    relay_at    INTEGER NOT NULL,
    UNIQUE (book_no, device_id, client_id)
);
"""


@dataclass(slots=True)
class BookState:
    """A book's head, mirrored in the `books` row written in the same transaction."""

    no: int
    book_ref: str
    epoch: str
    seq: int = 0
    oldest: int = 1
    cum: int = 0
    trimmed: int = 0
    oldest_at: int = 0  # relay time of the oldest retained op (0: none, or not known)

    @property
    def bytes(self) -> int:
        return self.cum - self.trimmed

    def head(self) -> Head:
        return Head(self.epoch, self.seq, self.oldest, self.bytes)

    def row(self) -> tuple[str, int, int, int, int, int]:
        return (self.epoch, self.seq, self.oldest, self.cum, self.trimmed, self.no)

    def saved(self) -> tuple[int, int, int, int, int]:
        return (self.seq, self.oldest, self.cum, self.trimmed, self.oldest_at)

    def restore(self, saved: tuple[int, int, int, int, int]) -> None:
        self.seq, self.oldest, self.cum, self.trimmed, self.oldest_at = saved


class StoreError(Exception):
    """The backlog file failed (disk full, I/O error): the batch was not kept."""


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:  # not Linux: no way to tell a machine crash from a process crash
        return ""


class DurableBacklog:
    def __init__(self, path: Path, limits: BacklogLimits) -> None:
        self.path = path
        self.limits = limits
        self.books: dict[str, BookState] = {}
        self.total = 0  # retained bytes of every book
        self._db: sqlite3.Connection | None = None
        self._next_no = 1

    # Lifecycle.
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
            if self._maybe_torn(db):
                log.warning("backlog may have lost writes in a machine crash; new epochs")
                db.close()
                self._remove_files()
                db = self._connect()
        except sqlite3.DatabaseError as exc:
            log.warning("backlog file unreadable; new epochs", extra={"error": str(exc)})
            self._remove_files()
            db = self._connect()
        self._db = db
        self._mark_running(db)
        self._load(db)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
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
        for suffix in ("", "-wal", "-shm"):
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

    def _load(self, db: sqlite3.Connection) -> None:
        rows = db.execute("SELECT no, book_ref, epoch, seq, oldest, cum, trimmed FROM books")
        for no, book_ref, epoch, seq, oldest, cum, trimmed in rows:
            book = BookState(no, book_ref, epoch, seq, oldest, cum, trimmed)
            book.oldest_at = self._at(book, oldest)
            self.books[book_ref] = book
            self.total += book.bytes
            self._next_no = max(self._next_no, no + 1)

    def close(self) -> None:
        """A clean close: everything on disk, and marked so."""
        db, self._db = self._db, None
        if db is None:
            return
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("INSERT OR REPLACE INTO store (key, value) VALUES ('clean', '1')")
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
            book = BookState(self._next_no, book_ref, new_epoch())
            self._next_no += 1
            self.db.execute(
                "INSERT INTO books (no, book_ref, epoch, seq, oldest, cum, trimmed)"
                " VALUES (?, ?, ?, 0, 1, 0, 0)",
                (book.no, book_ref, book.epoch),
            )
            self.books[book_ref] = book
        return book

    def drop(self, book_ref: str) -> None:
        """Erasure: its ops, counters and client ids are gone; a later book of the same
        id starts afresh with a new epoch."""
        book = self.books.pop(book_ref, None)
        if book is None:
            return
        self.total -= book.bytes
        base = book.no << SEQ_BITS
        with self._transaction():
            self.db.execute("DELETE FROM ops WHERE id BETWEEN ? AND ?", (base, base | SEQ_MASK))
            self.db.execute("DELETE FROM op_ids WHERE book_no = ?", (book.no,))
            self.db.execute("DELETE FROM books WHERE no = ?", (book.no,))

    # Appends.
    def append(self, batch: list[tuple[str, NewOp, str]]) -> list[Appended]:
        """Keep a batch of (book_ref, op, tail) in one transaction, committed before this
        returns; answers in order. On failure nothing of the batch is kept."""
        books = {ref: self.book(ref) for ref, _, _ in batch}
        saved = {ref: b.saved() for ref, b in books.items()}
        total = self.total
        try:
            with self._transaction():
                results = self._append_fast(batch, books)
                if results is None:  # a retried client id is among them
                    for ref, book in books.items():
                        book.restore(saved[ref])
                    self.total = total
                    results = self._append_one_by_one(batch, books)
                self._trim(books.values(), max(op.now for _, op, _ in batch))
                self.db.executemany(
                    "UPDATE books SET epoch = ?, seq = ?, oldest = ?, cum = ?, trimmed = ?"
                    " WHERE no = ?",
                    [b.row() for b in books.values()],
                )
        except sqlite3.Error as exc:
            for ref, book in books.items():
                book.restore(saved[ref])
            self.total = total
            raise StoreError(type(exc).__name__) from None
        return results

    def _append_fast(
        self, batch: list[tuple[str, NewOp, str]], books: dict[str, BookState]
    ) -> list[Appended] | None:
        """The common case, no retry: seqs handed out in order, ids inserted all at once
        (a retry shows as an ignored insert; then None and the savepoint rolled back)."""
        db = self.db
        ops: list[tuple[int, int, int, str]] = []
        ids: list[tuple[int, str, str, int, int]] = []
        results: list[Appended] = []
        for ref, op, tail in batch:
            book = books[ref]
            seq = self._take_seq(book, op.now, len(tail))
            ops.append(((book.no << SEQ_BITS) | seq, op.now, book.cum - len(tail), tail))
            if op.client_id is not None:
                ids.append((book.no, op.device_id, op.client_id, seq, op.now))
            results.append(Appended(seq, op.now, False))
        if ids:
            db.execute("SAVEPOINT ids")
            if db.executemany(_INSERT_ID, ids).rowcount != len(ids):
                db.execute("ROLLBACK TO ids")
                db.execute("RELEASE ids")
                return None
            db.execute("RELEASE ids")
        if self.limits.max_ops > 0:
            db.executemany("INSERT INTO ops (id, at, before, tail) VALUES (?, ?, ?, ?)", ops)
        return results

    def _append_one_by_one(
        self, batch: list[tuple[str, NewOp, str]], books: dict[str, BookState]
    ) -> list[Appended]:
        db = self.db
        results: list[Appended] = []
        for ref, op, tail in batch:
            book = books[ref]
            if op.client_id is not None:
                prior = db.execute(
                    "SELECT seq, relay_at FROM op_ids"
                    " WHERE book_no = ? AND device_id = ? AND client_id = ?",
                    (book.no, op.device_id, op.client_id),
                ).fetchone()
                if prior is not None:
                    results.append(Appended(prior[0], prior[1], True))
                    continue
            seq = self._take_seq(book, op.now, len(tail))
            if op.client_id is not None:
                db.execute(_INSERT_ID, (book.no, op.device_id, op.client_id, seq, op.now))
            if self.limits.max_ops > 0:
                db.execute(
                    "INSERT INTO ops (id, at, before, tail) VALUES (?, ?, ?, ?)",
                    ((book.no << SEQ_BITS) | seq, op.now, book.cum - len(tail), tail),
                )
            results.append(Appended(seq, op.now, False))
        return results

    def _take_seq(self, book: BookState, now: int, size: int) -> int:
        book.seq += 1
        if self.limits.max_ops > 0:
            if book.oldest == book.seq:  # the only retained op
                book.oldest_at = now
            book.cum += size
            self.total += size
        else:  # a pure relay keeps nothing
            book.oldest = book.seq + 1
        return book.seq

    # Reads.
    def head(self, book_ref: str, now: int) -> Head:
        book = self.book(book_ref)
        lim = self.limits
        if book.oldest_at and book.oldest_at <= now - lim.max_age_s:
            with self._transaction():
                self._trim_book(book, now)
                self.db.execute(_UPDATE_HEAD, book.row())
        return book.head()

    def read(self, book_ref: str, after: int, through: int) -> list[str]:
        """The forwarded-op lines of seqs after..through (those still retained)."""
        book = self.books.get(book_ref)
        if book is None or through <= after:
            return []
        base = book.no << SEQ_BITS
        rows = self.db.execute(
            "SELECT id, tail FROM ops WHERE id > ? AND id <= ? ORDER BY id",
            (base | after, base | through),
        )
        return [op_line(i & SEQ_MASK, tail) for i, tail in rows]

    # Trimming.
    def _trim(self, books: Iterable[BookState], now: int) -> None:
        for book in books:
            self._trim_book(book, now)
        lim = self.limits
        if self.total > lim.max_total_bytes:
            self._trim_total(lim.max_total_bytes - lim.max_total_bytes // TOTAL_SLACK_SHARE)

    def _trim_book(self, book: BookState, now: int) -> None:
        """The oldest ops past the book's limits of count, bytes and age go."""
        lim = self.limits
        first = max(book.oldest, book.seq - lim.max_ops + 1)  # the first op kept
        if book.cum - self._before(book, first) > lim.max_bytes:
            first = self._first_where(book, first, "before >= ?", book.cum - lim.max_bytes)
        if book.oldest_at and book.oldest_at <= now - lim.max_age_s:
            first = self._first_where(book, first, "at > ?", now - lim.max_age_s)
        self._trim_before(book, first)

    def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        """Ops up to `seq` go (a snapshot covers them), if `epoch` is still current."""
        book = self.books.get(book_ref)
        if book is None or book.epoch != epoch:
            return
        with self._transaction():
            self._trim_before(book, min(seq, book.seq) + 1)
            self.db.execute(_UPDATE_HEAD, book.row())

    def _trim_total(self, target: int) -> None:
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
        for book in [b for b in self.books.values() if b.bytes > level]:
            first = self._first_where(book, book.oldest, "before >= ?", book.cum - level)
            self._trim_before(book, first)
            self.db.execute(_UPDATE_HEAD, book.row())

    def _before(self, book: BookState, seq: int) -> int:
        """The book's byte count before op `seq` (all of it when seq is past the last)."""
        if seq > book.seq:
            return book.cum
        if seq == book.oldest:
            return book.trimmed
        row = self.db.execute(
            "SELECT before FROM ops WHERE id = ?", ((book.no << SEQ_BITS) | seq,)
        ).fetchone()
        return int(row[0]) if row else book.cum

    def _first_where(self, book: BookState, start: int, condition: str, value: int) -> int:
        """The first retained seq from `start` on that meets `condition` (past the last
        op when none does)."""
        base = book.no << SEQ_BITS
        row = self.db.execute(
            f"SELECT id FROM ops WHERE id >= ? AND id <= ? AND {condition} ORDER BY id LIMIT 1",
            (base | start, base | book.seq, value),
        ).fetchone()
        return (int(row[0]) & SEQ_MASK) if row else book.seq + 1

    def _at(self, book: BookState, seq: int) -> int:
        if seq > book.seq:
            return 0
        row = self.db.execute(
            "SELECT at FROM ops WHERE id = ?", ((book.no << SEQ_BITS) | seq,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _trim_before(self, book: BookState, first: int) -> None:
        """Drop the ops before seq `first`."""
        if first <= book.oldest:
            return
        base = book.no << SEQ_BITS
        trimmed = self._before(book, first)
        self.db.execute(
            "DELETE FROM ops WHERE id >= ? AND id < ?", (base | book.oldest, base | first)
        )
        self.total -= trimmed - book.trimmed
        book.trimmed = trimmed
        book.oldest = first
        book.oldest_at = self._at(book, first)

    # Upkeep.
    def forget_old_ids(self, now: int) -> int:
        """Client ids older than 24 h go, a chunk at a time; returns how many."""
        horizon = now - IDEMPOTENCY_TTL_S
        first = self.db.execute("SELECT min(rowid) FROM op_ids").fetchone()[0]
        if first is None:
            return 0
        cut = self.db.execute(
            "SELECT rowid FROM op_ids WHERE rowid >= ? AND rowid < ? AND relay_at > ?"
            " ORDER BY rowid LIMIT 1",
            (first, first + ID_EXPIRY_CHUNK, horizon),
        ).fetchone()
        end = cut[0] if cut else first + ID_EXPIRY_CHUNK
        with self._transaction():
            return self.db.execute("DELETE FROM op_ids WHERE rowid < ?", (end,)).rowcount

    def trim_aged(self, now: int) -> None:
        """Books nobody writes to or reads still lose their ops past the age limit."""
        cutoff = now - self.limits.max_age_s
        for book in [b for b in self.books.values() if b.oldest_at and b.oldest_at <= cutoff]:
            self.head(book.book_ref, now)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


_INSERT_ID = (
    "INSERT OR IGNORE INTO op_ids (book_no, device_id, client_id, seq, relay_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
_UPDATE_HEAD = "UPDATE books SET epoch = ?, seq = ?, oldest = ?, cum = ?, trimmed = ? WHERE no = ?"
