"""The embedded broker (the default): one process, its bus and sockets in memory, its
backlog durable in the data dir (relay.durable).

Appends asked for in one turn of the event loop are kept in one transaction, then
relayed and acked: an op is acked only once committed, and relayed only once it can
never be handed out again under another seq. Never decodes or logs a payload.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from infra.periodic import every
from relay.broker import (
    Appended,
    BacklogLimits,
    Clock,
    Done,
    Head,
    History,
    NewOp,
    Sink,
    op_line,
    op_tail,
    read_plan,
    settle,
)
from relay.durable import FILE_NAME, Batch, DurableBacklog

log = logging.getLogger("homepocket.relay")

MAX_BATCH_OPS = 512  # one transaction's appends: bounds the loop's pause to commit them
# After a batch this big, the next one gathers for one more loop turn: under load, a
# commit's cost (whole pages written) is shared by about twice as many ops, and what it
# adds to an op's wait (one turn) is small beside the queues of a busy server. A quiet
# server's lone op is still committed on the very next turn.
GATHER_LONGER_AFTER = 64
UPKEEP_EVERY_S = 10.0


@dataclass
class _Sockets:
    # conn_id -> (device_id, opened_at)
    open: dict[str, tuple[str, float]] = field(default_factory=dict)


class EmbeddedBroker:
    def __init__(self, data_dir: Path, limits: BacklogLimits, clock: Clock) -> None:
        self.instance = secrets.token_hex(8)
        self._clock = clock
        self.backlog = DurableBacklog(data_dir / FILE_NAME, limits)
        self._sockets: dict[str, _Sockets] = {}
        self._sink: Sink | None = None
        self._refunds: dict[str, list[float]] = {}
        # This turn's appends as the backlog takes them (book_ref, op, its line after the
        # seq), and beside them who to tell and the newest op's time.
        self._batch: Batch = []
        self._dones: list[Done] = []
        self._batch_now = 0
        self._flush_soon = False
        self._last_batch = 0
        self._upkeep: asyncio.Task[None] | None = None

    async def start(self, sink: Sink) -> None:
        self.backlog.open()
        self._sink = sink
        self._upkeep = asyncio.ensure_future(
            every(
                UPKEEP_EVERY_S,
                self._tidy,
                failed="backlog upkeep failed; will retry",
                log=log,
                start_now=False,
            )
        )

    async def stop(self) -> None:
        if self._upkeep is not None:
            self._upkeep.cancel()
            await asyncio.gather(self._upkeep, return_exceptions=True)
            self._upkeep = None
        self._flush()  # what was asked for is kept and answered before the file closes
        self._sink = None
        self.backlog.close()

    async def ping(self) -> None:
        self.backlog.db.execute("SELECT 1").fetchone()

    async def _tidy(self) -> None:
        now = int(self._clock())
        self.backlog.forget_old_ids(now)
        self.backlog.trim_aged(now)

    # Appends: gathered for one loop turn, kept in one transaction, then answered.
    async def append(self, book_ref: str, op: NewOp) -> Appended:
        future: asyncio.Future[Appended | Exception] = asyncio.get_running_loop().create_future()
        self.queue_append(book_ref, op, partial(settle, future))
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    def queue_append(self, book_ref: str, op: NewOp, done: Done) -> bool:
        tail = op_tail(op.payload, op.timestamp, op.device_id, op.now)
        self._batch.append((book_ref, op, tail))
        self._dones.append(done)
        if op.now > self._batch_now:
            self._batch_now = op.now
        if len(self._batch) >= MAX_BATCH_OPS:
            self._flush()
        elif not self._flush_soon:
            self._flush_soon = True
            soon = asyncio.get_running_loop().call_soon
            if self._last_batch >= GATHER_LONGER_AFTER:
                soon(soon, self._flush_now)
            else:
                soon(self._flush_now)
        return True

    async def append_then(self, book_ref: str, op: NewOp, done: Done) -> None:
        self.queue_append(book_ref, op, done)

    def _flush_now(self) -> None:
        self._flush_soon = False
        self._flush()

    def _flush(self) -> None:
        batch, dones, now = self._batch, self._dones, self._batch_now
        self._batch, self._dones, self._batch_now = [], [], 0
        self._last_batch = len(batch)
        if not batch:
            return
        outcome: list[Appended] | Exception
        try:
            outcome = self.backlog.append(batch, now)
        except Exception as exc:  # not kept: each op is refused, the client retries
            log.warning("backlog append failed", extra={"error_type": type(exc).__name__})
            outcome = exc
        sink = self._sink
        results: Sequence[Appended | Exception] = (
            [outcome] * len(batch) if isinstance(outcome, Exception) else outcome
        )
        for (book_ref, op, tail), done, result in zip(batch, dones, results, strict=True):
            if sink is not None and isinstance(result, Appended) and not result.duplicate:
                sink.on_op(book_ref, op.origin, result.seq, op_line(result.seq, tail))
            try:
                done(result)
            except Exception:
                log.exception("relay append answer failed")

    # Reads.
    async def head(self, book_ref: str, now: int) -> Head:
        return self.backlog.head(book_ref, now)

    async def history(self, book_ref: str, since: int, epoch: str | None, limit: int) -> History:
        head = self.backlog.head(book_ref, int(self._clock()))
        start, gap = read_plan(head, since, epoch)
        lines = self.backlog.read(book_ref, start, min(head.latest_seq, start + limit))
        return History(head, start, gap, lines)

    async def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        self.backlog.trim_through(book_ref, epoch, seq)

    # The bus: this process only.
    async def publish(self, book_ref: str, control: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink.on_control(book_ref, control)

    async def listen(self, book_ref: str) -> None:
        return None

    async def unlisten(self, book_ref: str) -> None:
        return None

    async def drop_book(self, book_ref: str) -> None:
        self.backlog.drop(book_ref)
        self._sockets.pop(book_ref, None)

    # Sockets and presence.
    async def socket_opened(
        self, book_ref: str, device_id: str, conn_id: str, now: int
    ) -> list[str]:
        sockets = self._sockets.setdefault(book_ref, _Sockets()).open
        sockets[conn_id] = (device_id, time.monotonic())
        mine = [(at, cid) for cid, (dev, at) in sockets.items() if dev == device_id]
        return [cid for _, cid in sorted(mine)]

    async def socket_closed(self, book_ref: str, device_id: str, conn_id: str) -> bool:
        book = self._sockets.get(book_ref)
        if book is None:
            return False
        book.open.pop(conn_id, None)
        if not book.open:
            del self._sockets[book_ref]
            return False
        return any(dev == device_id for dev, _ in book.open.values())

    async def online(self, book_ref: str) -> set[str]:
        book = self._sockets.get(book_ref)
        return {dev for dev, _ in book.open.values()} if book else set()

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
