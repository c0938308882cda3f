"""The in-process broker (embedded default): one process, everything in memory.

A new process is a new store, so every book gets a new epoch: clients resuming from
before the restart are told `sync_gap`, never silently given a different history.
Never decodes or logs a payload.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from relay.broker import (
    IDEMPOTENCY_TTL_S,
    Appended,
    BacklogLimits,
    Clock,
    Done,
    Head,
    History,
    NewOp,
    Sink,
    new_epoch,
    op_json,
    read_plan,
)


@dataclass
class _Book:
    epoch: str = field(default_factory=new_epoch)
    seq: int = 0
    oldest: int = 1
    bytes: int = 0
    # (relay_timestamp, size, line) per retained op, oldest first; seqs are contiguous.
    ops: deque[tuple[int, int, str]] = field(default_factory=deque)
    # device_id -> client id -> (seq, relay_timestamp, remembered_at)
    ids: dict[str, OrderedDict[str, tuple[int, int, float]]] = field(default_factory=dict)
    # conn_id -> (device_id, opened_at)
    sockets: dict[str, tuple[str, float]] = field(default_factory=dict)


class MemoryBroker:
    def __init__(self, limits: BacklogLimits, clock: Clock) -> None:
        self.instance = secrets.token_hex(8)
        self._limits = limits
        self._clock = clock
        self._books: dict[str, _Book] = {}
        self._sink: Sink | None = None
        self._refunds: dict[str, list[float]] = {}

    async def start(self, sink: Sink) -> None:
        self._sink = sink

    async def stop(self) -> None:
        self._sink = None

    async def ping(self) -> None:
        return None

    def _book(self, book_ref: str) -> _Book:
        book = self._books.get(book_ref)
        if book is None:
            book = self._books[book_ref] = _Book()
        return book

    def _trim(self, book: _Book, now: float) -> None:
        lim = self._limits
        ops = book.ops
        while ops and (
            len(ops) > lim.max_ops or book.bytes > lim.max_bytes or ops[0][0] <= now - lim.max_age_s
        ):
            _, size, _ = ops.popleft()
            book.bytes -= size
            book.oldest += 1

    async def append(self, book_ref: str, op: NewOp) -> Appended:
        return self._append(book_ref, op)

    def queue_append(self, book_ref: str, op: NewOp, done: Done) -> bool:
        result: Appended | Exception
        try:
            result = self._append(book_ref, op)
        except Exception as exc:
            result = exc
        done(result)
        return True

    async def append_then(self, book_ref: str, op: NewOp, done: Done) -> None:
        self.queue_append(book_ref, op, done)

    def _append(self, book_ref: str, op: NewOp) -> Appended:
        book = self._book(book_ref)
        seen = book.ids.get(op.device_id)
        if seen is None:  # not setdefault: that would make a dict per op to throw away
            seen = book.ids[op.device_id] = OrderedDict()
        self._forget_old_ids(seen)
        if op.client_id is not None and op.client_id in seen:
            seq, relay_ts, _ = seen[op.client_id]
            return Appended(seq, relay_ts, duplicate=True)
        book.seq += 1
        seq = book.seq
        line = op_json(seq, op.payload, op.timestamp, op.device_id, op.now)
        book.ops.append((op.now, len(line), line))
        book.bytes += len(line)
        self._trim(book, op.now)
        if op.client_id is not None:
            seen[op.client_id] = (seq, op.now, time.monotonic())
        if self._sink is not None:
            self._sink.on_op(book_ref, op.origin, seq, line)
        return Appended(seq, op.now, duplicate=False)

    @staticmethod
    def _forget_old_ids(seen: OrderedDict[str, tuple[int, int, float]]) -> None:
        horizon = time.monotonic() - IDEMPOTENCY_TTL_S
        while seen:
            first = next(iter(seen.values()))
            if first[2] > horizon:
                break
            seen.popitem(last=False)

    async def head(self, book_ref: str, now: int) -> Head:
        book = self._book(book_ref)
        self._trim(book, now)
        return Head(book.epoch, book.seq, book.oldest, book.bytes)

    async def history(self, book_ref: str, since: int, epoch: str | None, limit: int) -> History:
        head = await self.head(book_ref, int(self._clock()))
        start, gap = read_plan(head, since, epoch)
        ops = self._books[book_ref].ops
        first = start + 1 - head.oldest_seq
        lines = [ops[i][2] for i in range(first, min(len(ops), first + limit))]
        return History(head, start, gap, lines)

    async def publish(self, book_ref: str, control: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink.on_control(book_ref, control)

    async def listen(self, book_ref: str) -> None:
        return None

    async def unlisten(self, book_ref: str) -> None:
        return None

    async def drop_book(self, book_ref: str) -> None:
        self._books.pop(book_ref, None)

    async def socket_opened(
        self, book_ref: str, device_id: str, conn_id: str, now: int
    ) -> list[str]:
        sockets = self._book(book_ref).sockets
        sockets[conn_id] = (device_id, time.monotonic())
        mine = [(at, cid) for cid, (dev, at) in sockets.items() if dev == device_id]
        return [cid for _, cid in sorted(mine)]

    async def socket_closed(self, book_ref: str, device_id: str, conn_id: str) -> bool:
        book = self._books.get(book_ref)
        if book is None:
            return False
        book.sockets.pop(conn_id, None)
        return any(dev == device_id for dev, _ in book.sockets.values())

    async def online(self, book_ref: str) -> set[str]:
        book = self._books.get(book_ref)
        return {dev for dev, _ in book.sockets.values()} if book else set()

    async def refund_connect(self, device_id: str, window_s: int) -> None:
        self._refunds.setdefault(device_id, []).append(time.monotonic() + window_s)

    async def take_refund(self, device_id: str) -> bool:
        now = time.monotonic()
        credits = [t for t in self._refunds.pop(device_id, []) if t > now]
        if not credits:
            return False
        if credits[1:]:
            self._refunds[device_id] = credits[1:]
        return True

    async def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        book = self._books.get(book_ref)
        if book is None or book.epoch != epoch:
            return  # another epoch: those seqs name other ops (or none)
        ops = book.ops
        while ops and book.oldest <= seq:
            _, size, _ = ops.popleft()
            book.bytes -= size
            book.oldest += 1
