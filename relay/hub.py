"""This instance's open relay sockets, the fan-out to them, and the `LiveChannel` other
capabilities use to reach sockets on every instance.

The fan-out loop never awaits: it appends one already-serialised line to each
socket's bounded queue, and each socket's writer sends what is queued as one frame.
Never decodes or logs a payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, cast

import orjson

from infra.metrics import RELAY_DELIVERIES, WS_CLOSES, WS_CONNECTIONS
from relay.broker import Broker

if TYPE_CHECKING:  # annotations only
    from infra.serving import DirectWebSocket
    from relay.budget import OpBudget

log = logging.getLogger("homepocket.relay")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Sending = Coroutine[Any, Any, None]
CLOSE_SEND_TIMEOUT_S = 5.0
MAX_INFLIGHT = 32

# Close codes of docs/CONTRACT.md §4, and the reason each carries.
TOKEN_EXPIRED = (4401, "INVALID_TOKEN")
REVOKED = (4403, "FORBIDDEN")
REPLACED = (4409, "TOO_MANY_SOCKETS")
ERASED = (4410, "BOOK_ERASED")
MALFORMED = (1008, "VALIDATION_ERROR")
TOO_SLOW = (1013, "SLOW_CONSUMER")


def dumps(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


Frame = tuple[str, int, int]  # text, lines in it, their length without separators


def frames(lines: list[str], limit: int) -> list[Frame]:
    """Lines joined by `\\n` into frames of at most `limit` characters (a longer line
    goes alone)."""
    if len(lines) == 1:
        return [(lines[0], 1, len(lines[0]))]
    out: list[Frame] = []
    start = 0
    while start < len(lines):
        end, size = start + 1, len(lines[start])
        while end < len(lines) and size + len(lines[end]) + 1 <= limit:
            size += len(lines[end]) + 1
            end += 1
        count = end - start
        out.append(("\n".join(lines[start:end]), count, size - count + 1))
        start = end
    return out


class Resumed:
    """Awaiting this finishes a coroutine that was started outside any task and
    suspended: what it waits on is handed to the awaiting task, which then drives it on
    exactly as if it had run it from the start."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Sending, waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        waiting = self.waiting
        while True:
            yield waiting
            try:
                waiting = self.coro.send(None)
            except StopIteration:
                return


class Conn:
    """One socket's outgoing side: a bounded queue drained by a writer task that exists
    only while there is something to send (idle sockets hold no task of their own).

    While `holding` (welcome and replay not yet sent), live traffic waits in `held` and
    goes out after the replay, ops the replay already covered skipped; and what the
    session queues itself (the welcome, the replay) is written once a replay page is
    queued, not each loop turn, so a reconnecting device costs one write, not two.
    """

    __slots__ = (
        "_closer",
        "_writer",
        "appending",
        "book_ref",
        "budget",
        "busy",
        "closed",
        "conn_id",
        "device_id",
        "expires_at",
        "finished",
        "flush_due",
        "frame_limit",
        "held",
        "held_bytes",
        "holding",
        "inflight",
        "last_seq",
        "low",
        "out",
        "out_bytes",
        "queue_limit",
        "reader",
        "send",
        "wire",
    )

    def __init__(
        self,
        send: Send,
        conn_id: str,
        device_id: str,
        book_ref: str,
        frame_limit: int,
        queue_limit: int,
    ) -> None:
        self.send = send
        self.conn_id = conn_id
        self.device_id = device_id
        self.book_ref = book_ref
        self.frame_limit = frame_limit
        self.queue_limit = queue_limit
        self.out: list[str] = []  # lines not yet handed to the writer
        self.out_bytes = 0
        self.flush_due = False  # a flush is scheduled for this loop turn
        # Made on first use: most sockets sit idle, and each of these costs memory.
        self.low: asyncio.Event | None = None  # set after each frame goes out, and on close
        self.holding = True
        self.held: list[tuple[int, str]] = []  # (seq, line); seq 0 for non-ops
        self.held_bytes = 0
        self.last_seq = 0  # highest seq queued to this socket
        self.closed: tuple[int, str] | None = None
        self.finished = False
        self.reader: asyncio.Task[Any] | None = None  # the session reading; stops at finish
        self.expires_at = 0  # the token's expiry, while armed (relay.expiry)
        self.inflight = 0  # ops sent to a pipelined broker, not yet answered
        self.appending: asyncio.Future[None] | None = None  # the reader waits for an answer
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        # The direct side of uvicorn's socket (infra.serving), None under another server.
        self.wire: DirectWebSocket | None = None
        self.budget: OpBudget | None = None  # RATE_LIMIT_WS_OPS, made on the first message
        self.busy = False  # the session is handling a message it read

    def expired(self) -> None:
        self.close(*TOKEN_EXPIRED)

    async def reserve_append(self) -> None:
        """Wait for room among this socket's appends in flight (pipelined brokers)."""
        while not self.try_reserve():
            await self._answer()

    def try_reserve(self) -> bool:
        """Room for one more append in flight, taken if there is (give it back with
        `appended`)."""
        if self.inflight >= MAX_INFLIGHT:
            return False
        self.inflight += 1
        return True

    async def all_appended(self) -> None:
        """Wait until every append of this socket in flight is answered."""
        while self.inflight:
            await self._answer()

    async def _answer(self) -> None:
        if self.appending is None or self.appending.done():
            self.appending = asyncio.get_running_loop().create_future()
        await self.appending

    def appended(self) -> None:
        """One append answered (acked or refused): room for the next."""
        self.inflight -= 1
        waiter = self.appending
        if waiter is not None:
            self.appending = None
            if not waiter.done():
                waiter.set_result(None)

    def finish(self) -> None:
        """Nothing more goes out on this socket: the session stops reading."""
        if self.finished:
            return
        self.finished = True
        if self.low is not None:  # a replay waiting for room stops waiting
            self.low.set()
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.cancel()

    def push(self, line: str) -> None:
        """Queue one message line; a socket that cannot keep up is cut off (1013)."""
        if self.closed is not None:
            return
        self.out.append(line)
        self.out_bytes += len(line)
        if self.out_bytes > self.queue_limit:
            self.close(*TOO_SLOW)
            return
        # Inline, not a call: this runs for every message delivered.
        if not self.flush_due and self._writer is None and not self.finished and not self.holding:
            self.flush_due = True  # once per loop turn: what queues meanwhile shares frames
            asyncio.get_running_loop().call_soon(self._flush)

    def flush_soon(self) -> None:
        """Write what is queued at the end of this loop turn, holding or not."""
        if self.out and not self.flush_due and self._writer is None and not self.finished:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def push_op(self, seq: int, line: str) -> None:
        if self.holding:
            self._hold(seq, line)
        elif seq > self.last_seq:
            self.last_seq = seq
            self.push(line)

    def push_control(self, line: str) -> None:
        if self.holding:
            self._hold(0, line)
        else:
            self.push(line)

    def _hold(self, seq: int, line: str) -> None:
        self.held.append((seq, line))
        self.held_bytes += len(line)
        if self.held_bytes > self.queue_limit:
            self.close(*TOO_SLOW)

    def release(self) -> None:
        """Replay done: what arrived meanwhile goes out, each op once, in seq order."""
        held, self.held, self.held_bytes = self.held, [], 0
        self.holding = False
        for seq, line in held:
            if seq == 0:
                self.push(line)
            elif seq > self.last_seq:
                self.last_seq = seq
                self.push(line)
        self.flush_soon()

    async def drained(self, below: int) -> None:
        """Wait until the queue holds less than `below` bytes (replay pacing)."""
        self.flush_soon()
        while self.out_bytes >= below and self.closed is None and not self.finished:
            if self.low is None:
                self.low = asyncio.Event()
            self.low.clear()
            await self.low.wait()

    def close(self, code: int, reason: str) -> None:
        """Close with a code: queued lines are dropped (the client resumes from its position)."""
        if self.closed is not None:
            return
        self.closed = (code, reason)
        self.out.clear()
        self.out_bytes = 0
        if self.low is not None:
            self.low.set()
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.ensure_future(self._send_close(code, reason))

    async def _send_close(self, code: int, reason: str) -> None:
        WS_CLOSES.labels(str(code)).inc()
        try:
            await asyncio.wait_for(
                self.send({"type": "websocket.close", "code": code, "reason": reason}),
                CLOSE_SEND_TIMEOUT_S,
            )
        except Exception:  # gone already, or never read again: nothing more to tell it
            log.debug("close not sent", extra={"code": code})
        finally:
            self.finish()

    def _flush(self) -> None:
        """Send what is queued, several lines to a frame, without a task.

        uvicorn's send completes without suspending unless the transport has asked it to
        wait (the peer reads slowly): so each send is run inline, and only one that does
        wait is finished, with what follows it, by a writer task. A task per flush cost
        more than the send itself at saturation.
        """
        self.flush_due = False
        if self._writer is not None or self.closed is not None or self.finished:
            return
        wire = self.wire
        while self.out:
            texts = self._take()
            for at, (text, count, size) in enumerate(texts):
                self.out_bytes -= size
                RELAY_DELIVERIES.inc(count)
                try:
                    if wire is not None and wire.write_text(text):
                        continue
                    # An ASGI server's send is a coroutine function.
                    sending = cast(Sending, self.send({"type": "websocket.send", "text": text}))
                    waiting = sending.send(None)
                except StopIteration:
                    continue
                except Exception:  # the peer went away mid-send; the reader sees it
                    self.finish()
                    return
                self._writer = asyncio.ensure_future(self._write(sending, waiting, texts[at + 1 :]))
                return
        if self.low is not None:
            self.low.set()

    async def _write(self, sending: Sending, waiting: Any, texts: list[Frame]) -> None:
        """Finish a send that had to wait, then send the rest in this task until the
        queue is empty."""
        try:
            await Resumed(sending, waiting)
            if self.low is not None:
                self.low.set()
            while True:
                for text, count, size in texts:
                    self.out_bytes -= size
                    RELAY_DELIVERIES.inc(count)
                    await self.send({"type": "websocket.send", "text": text})
                    if self.low is not None:
                        self.low.set()
                if not self.out:
                    break
                texts = self._take()
        except asyncio.CancelledError:
            raise
        except Exception:  # the peer went away mid-send; the reader sees the disconnect
            self.finish()
        finally:
            sending.close()
            self._writer = None

    def _take(self) -> list[Frame]:
        """What is queued, as the frames to send."""
        lines, self.out = self.out, []
        return frames(lines, self.frame_limit)

    async def stop(self) -> None:
        for task in (self._writer, self._closer):
            if task is not None and task is not asyncio.current_task():
                if task is self._writer:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class BookLocks:
    """One lock per book, held in the dict only while someone holds or waits for it:
    a book's first socket subscribes and its last unsubscribes in turn, while other
    books go on (one lock for all made a reconnect storm on Redis subscribe its
    thousands of books one round trip after another)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, book_ref: str) -> AsyncIterator[None]:
        entry = self._locks.get(book_ref)
        if entry is None:
            entry = self._locks[book_ref] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[book_ref]

    def __len__(self) -> int:
        return len(self._locks)


class Hub:
    """Sockets of this instance by book; the broker's sink; the app's `LiveChannel`."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.books: dict[str, dict[str, Conn]] = {}
        self._ids = itertools.count(1)
        self._locks = BookLocks()

    def new_conn_id(self) -> str:
        return f"{self.broker.instance}.{next(self._ids)}"

    # Sink: what arrives on the bus.
    def on_op(self, book_ref: str, origin: str, seq: int, line: str) -> None:
        conns = self.books.get(book_ref)
        if not conns:
            return
        for conn in conns.values():
            if conn.conn_id != origin:
                conn.push_op(seq, line)

    def on_ops(self, book_ref: str, seq: int, origins: list[str], lines: list[str]) -> None:
        conns = self.books.get(book_ref)
        if not conns:
            return
        for conn in conns.values():
            me = conn.conn_id
            at = seq
            for origin, line in zip(origins, lines, strict=True):
                if origin != me:
                    conn.push_op(at, line)
                at += 1

    def on_control(self, book_ref: str, control: dict[str, Any]) -> None:
        conns = self.books.get(book_ref)
        if not conns:
            return
        device = control.get("device")
        target = control.get("conn")
        if control.get("k") == "close":
            for conn in list(conns.values()):
                if (device is None or conn.device_id == device) and (
                    target is None or conn.conn_id == target
                ):
                    conn.close(int(control["code"]), str(control["reason"]))
            return
        exclude = control.get("exclude")
        line = str(control["line"])
        for conn in conns.values():
            if (device is None or conn.device_id == device) and conn.device_id != exclude:
                conn.push_control(line)

    def on_bus_lost(self) -> None:
        # Keys are read from the metadata store on every handshake (no cache to clear);
        # ops published while the bus was down reach clients through resume.
        log.warning("relay bus subscription lost; sockets resync on reconnect")
        for conns in list(self.books.values()):
            for conn in list(conns.values()):
                conn.close(1012, "BUS_RESTARTING")

    # Sockets of this instance.
    async def attach(self, conn: Conn, now: int) -> None:
        async with self._locks.hold(conn.book_ref):
            if conn.book_ref not in self.books:
                await self.broker.listen(conn.book_ref)
                self.books[conn.book_ref] = {}
            self.books[conn.book_ref][conn.conn_id] = conn
            WS_CONNECTIONS.inc()
        try:
            ids = await self.broker.socket_opened(conn.book_ref, conn.device_id, conn.conn_id, now)
            for old in ids[:-2]:  # at most 2 sockets per device: the oldest go
                await self.broker.publish(
                    conn.book_ref,
                    {"k": "close", "conn": old, "code": REPLACED[0], "reason": REPLACED[1]},
                )
            if len(ids) == 1:
                await self.presence(conn.book_ref, conn.device_id, "online")
        except BaseException:
            # Not attached after all, so the session will not detach it: it goes now
            # (else the hub would keep it, and the broker count it as open, for good).
            with contextlib.suppress(Exception):
                await self.detach(conn)
            raise

    async def _drop(self, conn: Conn) -> None:
        async with self._locks.hold(conn.book_ref):
            conns = self.books.get(conn.book_ref)
            if conns is not None:
                if conns.pop(conn.conn_id, None) is not None:
                    WS_CONNECTIONS.dec()
                if not conns:
                    del self.books[conn.book_ref]
                    await self.broker.unlisten(conn.book_ref)

    async def detach(self, conn: Conn) -> None:
        await self._drop(conn)
        still_open = await self.broker.socket_closed(conn.book_ref, conn.device_id, conn.conn_id)
        gone_for_good = conn.closed is not None and conn.closed[0] in (REVOKED[0], ERASED[0])
        if not still_open and not gone_for_good:
            await self.presence(conn.book_ref, conn.device_id, "offline")

    async def presence(self, book_ref: str, device_id: str, status: str) -> None:
        message = {"type": "presence", "device_id": device_id, "status": status}
        await self.send_to_book(book_ref, message, exclude_device=device_id)

    def close_all(self, code: int, reason: str) -> None:
        for conns in list(self.books.values()):
            for conn in list(conns.values()):
                conn.close(code, reason)

    # LiveChannel (infra.ports): reaches sockets on every instance through the bus.
    async def online_devices(self, book_ref: str) -> set[str]:
        return await self.broker.online(book_ref)

    async def send_to_device(self, book_ref: str, device_id: str, message: dict[str, Any]) -> None:
        await self.broker.publish(
            book_ref, {"k": "msg", "device": device_id, "line": dumps(message)}
        )

    async def send_to_book(
        self, book_ref: str, message: dict[str, Any], exclude_device: str | None = None
    ) -> None:
        await self.broker.publish(
            book_ref, {"k": "msg", "exclude": exclude_device, "line": dumps(message)}
        )

    async def close_device(self, book_ref: str, device_id: str, code: int, reason: str) -> None:
        await self.broker.publish(
            book_ref, {"k": "close", "device": device_id, "code": code, "reason": reason}
        )

    async def close_book(self, book_ref: str, code: int, reason: str) -> None:
        await self.broker.publish(book_ref, {"k": "close", "code": code, "reason": reason})
