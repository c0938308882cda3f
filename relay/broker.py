"""The broker interface: per-book seq and epoch, the bounded ciphertext backlog, the bus
between instances, and who has sockets open. Two backends, one factory.

Never decodes, parses or logs a payload; never sees a raw book_id (only `book_ref`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from infra.settings import Settings

OP_PREFIX = '{"type":"crdt_operation","seq":'
IDEMPOTENCY_TTL_S = 24 * 3600


Clock = Callable[[], float]


def id_key(device_id: str, client_id: str) -> str:
    """Where both brokers remember a client op id: a device id has no space, so the key
    names one pair (an id is its sender's own)."""
    return f"{device_id} {client_id}"


def new_epoch() -> str:
    """An opaque epoch: 96 random bits, never a counter (docs/CONTRACT.md §4)."""
    return secrets.token_hex(12)


def op_tail(payload: str, timestamp: int, device_id: str, relay_timestamp: int) -> str:
    """Everything of the forwarded op after its seq, serialised once for all receivers.

    The payload string goes out exactly as it came in (never decoded, never re-encoded).
    Written as text, not through a JSON encoder (a third of the cost, once per op): no
    field needs escaping, since the payload is checked standard base64 (`relay.ops`),
    the device id 32 hex digits (`infra.auth`) and both times are ints.
    """
    return (
        f',"payload":"{payload}","timestamp":{timestamp:d},'
        f'"device_id":"{device_id}","relay_timestamp":{relay_timestamp:d}}}'
    )


def op_line(seq: int, tail: str) -> str:
    """The whole forwarded op: its head and seq, then its `op_tail`."""
    return f"{OP_PREFIX}{seq}{tail}"


def op_json(seq: int, payload: str, timestamp: int, device_id: str, relay_timestamp: int) -> str:
    """The whole forwarded op, when its seq is known where it is serialised."""
    return op_line(seq, op_tail(payload, timestamp, device_id, relay_timestamp))


class NewOp(NamedTuple):  # a tuple: made once per op, a frozen dataclass costs 4x
    device_id: str  # the authenticated sender (32 hex digits), never what the client wrote
    client_id: str | None
    payload: str  # base64 as received, checked (`op_tail` writes it without escaping)
    timestamp: int
    origin: str  # connection id of the sender ("" for HTTP), so it is not echoed to itself
    now: int


class Appended(NamedTuple):
    seq: int
    relay_timestamp: int
    duplicate: bool  # a retried client id: acked with the first seq, not relayed again


@dataclass(frozen=True)
class Head:
    epoch: str
    latest_seq: int
    oldest_seq: int  # latest_seq + 1 when nothing is retained
    retained_bytes: int

    @property
    def retained_ops(self) -> int:
        return self.latest_seq - self.oldest_seq + 1


@dataclass(frozen=True)
class History:
    head: Head
    start: int  # the lines are the ops after this seq
    gap: bool  # what was asked for is gone: `start` is the resume point
    lines: list[str]  # forwarded-op JSON lines, increasing seq

    @property
    def last_seq(self) -> int:
        return self.start + len(self.lines)

    @property
    def has_more(self) -> bool:
        return self.last_seq < self.head.latest_seq


def read_plan(head: Head, since: int, epoch: str | None) -> tuple[int, bool]:
    """Where a read starts (after this seq) and whether it is a gap (docs/CONTRACT.md §4)."""
    gap = (
        (since > 0 and epoch != head.epoch)
        or since > head.latest_seq
        or since + 1 < head.oldest_seq
    )
    return (head.oldest_seq - 1 if gap else since), gap


# Told the outcome of one append: what was appended, or why it was not.
Done = Callable[[Appended | Exception], None]


def settle(future: asyncio.Future[Appended | Exception], result: Appended | Exception) -> None:
    """A `Done` for a waiting caller (who may have gone away meanwhile)."""
    if not future.done():
        future.set_result(result)


class Sink(Protocol):
    """Where a broker hands what arrives on the bus (the hub of this instance)."""

    def on_op(self, book_ref: str, origin: str, seq: int, line: str) -> None: ...

    def on_ops(self, book_ref: str, seq: int, origins: list[str], lines: list[str]) -> None:
        """Consecutive ops of a book from seq on, each with its origin connection."""
        ...

    def on_control(self, book_ref: str, control: dict[str, Any]) -> None: ...

    def on_bus_lost(self) -> None:
        """The subscription dropped: what this instance believed may be stale."""
        ...


class Broker(Protocol):
    instance: str  # this process's random id, prefix of its connection ids

    async def start(self, sink: Sink) -> None: ...

    async def stop(self) -> None: ...

    async def ping(self) -> None: ...

    async def append(self, book_ref: str, op: NewOp) -> Appended:
        """Assign the next seq, keep the op in the backlog and publish it: one atomic step."""
        ...

    def queue_append(self, book_ref: str, op: NewOp, done: Done) -> bool:
        """`append` without waiting for it, if it needs no wait: False (and nothing
        done) when it does. `done` gets the outcome, at once or later; appends are
        answered in the order they were queued."""
        ...

    async def append_then(self, book_ref: str, op: NewOp, done: Done) -> None:
        """`queue_append`, waiting first where it must (a pipelined broker holds an op
        while the bus is too far behind)."""
        ...

    async def history(self, book_ref: str, since: int, epoch: str | None, limit: int) -> History:
        """Up to `limit` retained ops after `since` (or after the resume point of a gap)."""
        ...

    async def head(self, book_ref: str, now: int) -> Head: ...

    async def publish(self, book_ref: str, control: dict[str, Any]) -> None:
        """A control message to every instance with sockets of the book (this one too)."""
        ...

    async def listen(self, book_ref: str) -> None:
        """Start receiving the book's bus messages; returns once they will arrive."""
        ...

    async def unlisten(self, book_ref: str) -> None: ...

    async def drop_book(self, book_ref: str) -> None:
        """Erasure: the backlog, counters and socket records of the book are gone."""
        ...

    async def socket_opened(
        self, book_ref: str, device_id: str, conn_id: str, now: int
    ) -> list[str]:
        """Record a socket; returns the device's live socket ids, oldest first."""
        ...

    async def socket_closed(self, book_ref: str, device_id: str, conn_id: str) -> bool:
        """Forget a socket; returns True when the device still has one open anywhere."""
        ...

    async def online(self, book_ref: str) -> set[str]: ...

    async def refund_connect(self, device_id: str, window_s: int) -> None:
        """A connect the server itself ended (1012, 1013) does not count (docs/CONTRACT.md §6)."""
        ...

    async def take_refund(self, device_id: str) -> bool: ...

    async def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        """Drop the retained ops with seq <= `seq` (a completed snapshot covers them),
        only while the book is still in `epoch`; `oldest_seq` then becomes `seq + 1` (at
        most `latest_seq + 1`). Never a seq or an epoch change: only the backlog shrinks."""
        ...


@dataclass(frozen=True)
class BacklogLimits:
    max_ops: int
    max_bytes: int
    max_age_s: int
    max_total_bytes: int  # every book's together

    @classmethod
    def of(cls, s: Settings) -> BacklogLimits:
        return cls(
            s.backlog_max_ops, s.backlog_max_bytes, s.backlog_max_age_s, s.backlog_max_total_bytes
        )


def open_broker(settings: Settings, redis: Callable[[], Any], clock: Clock) -> Broker:
    """Redis when REDIS_URL is set (many instances act as one), else the embedded
    broker: in-process, its backlog in the data dir."""
    limits = BacklogLimits.of(settings)
    if settings.redis_url:
        from relay.redis_broker import RedisBroker  # production dependency, lazily

        return RedisBroker(
            redis, settings.redis_url, limits, clock, timeout_s=settings.backend_timeout_s
        )
    from relay.embedded import EmbeddedBroker

    return EmbeddedBroker(settings.data_dir, limits, clock)
