"""A small Redis protocol (RESP2) client for the relay's hot path: an asyncio protocol
whose replies are parsed in C by `hiredis` (redis-py's optional parser) straight from
`data_received`, and handed to callbacks in order. No task, future or stream read per
reply.

Two users: the pipelined command connection of the backlog scripts (one write per
batch of appends, replies matched to callers in order) and the subscriber connection
(relay.redis_sub). Everything else goes through redis-py. Never logs what it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

log = logging.getLogger("homepocket.relay")

Arg = bytes | str | int
OnReply = Callable[[Any], None]
REPLY_TIMEOUT_S = 5.0  # a reply later than this: the connection is treated as lost
CONNECT_TIMEOUT_S = 5.0


class ReplyError(Exception):
    """Redis answered `-ERR ...` (the text is Redis's, never a payload)."""


def pack(*parts: Arg) -> bytes:
    """One command in RESP (hiredis packs it in C)."""
    return hiredis.pack_command(parts)  # type: ignore[arg-type,no-any-return]


class RespProtocol(asyncio.Protocol):
    """One connection: each reply (a `ReplyError` instance for `-ERR`) goes to
    `on_reply` as it is parsed; the end of the connection to `on_lost`, once."""

    def __init__(self, on_reply: OnReply, on_lost: Callable[[], None]) -> None:
        self.on_reply = on_reply
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ReplyError)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's: no subclass)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                self.on_reply(reply)
        except hiredis.ProtocolError:
            log.warning("unexpected reply from Redis")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # connection_lost follows

    def abandon(self) -> None:
        """Close a connection that is done with: its late replies and its end go nowhere."""
        self.on_lost = self.on_reply = _nothing
        self.close()


async def connect(
    url: str,
    select_db: bool,
    on_reply: OnReply,
    on_lost: Callable[[], None],
    setup_commands: tuple[bytes, ...] = (),
) -> RespProtocol:
    """Connect, authenticate, pick the database the URL names and run `setup_commands`;
    then replies go to `on_reply`. A loss during set-up raises; after it, `on_lost` is
    called."""
    parts = urlsplit(url)
    setup: deque[asyncio.Future[Any]] = deque()

    def setup_reply(reply: Any) -> None:
        if setup:
            future = setup.popleft()
            if not future.done():
                future.set_result(reply)

    def setup_lost() -> None:
        while setup:
            future = setup.popleft()
            if not future.done():
                future.set_exception(ConnectionError("Redis closed the connection"))

    proto = RespProtocol(setup_reply, setup_lost)
    loop = asyncio.get_running_loop()
    if parts.scheme == "unix":
        opening = loop.create_unix_connection(lambda: proto, parts.path)
    else:
        tls = ssl.create_default_context() if parts.scheme == "rediss" else None
        host = parts.hostname or "localhost"
        opening = loop.create_connection(lambda: proto, host, parts.port or 6379, ssl=tls)
    await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)
    commands: list[bytes] = []
    if parts.password is not None:
        user = [unquote(parts.username).encode()] if parts.username else []
        commands.append(pack(b"AUTH", *user, unquote(parts.password).encode()))
    db = parts.path.lstrip("/")
    if select_db and db.isdigit() and db != "0":
        commands.append(pack(b"SELECT", db))
    commands += setup_commands
    try:
        for command in commands:
            future: asyncio.Future[Any] = loop.create_future()
            setup.append(future)
            proto.write(command)
            if isinstance(await asyncio.wait_for(future, CONNECT_TIMEOUT_S), ReplyError):
                raise ConnectionError("Redis refused the connection set-up")
    except BaseException:
        proto.close()
        raise
    if proto.transport is None:
        raise ConnectionError("Redis closed the connection")
    proto.on_reply, proto.on_lost = on_reply, on_lost
    return proto


class CommandConnection:
    """Pipelined commands on one connection, each answered through its callback in the
    order sent (a `ReplyError` or `ConnectionError` instance when it failed). Commands
    sent while there is no connection wait for the next one, made on demand; each new
    connection first runs `setup_commands` (e.g. SCRIPT LOAD)."""

    def __init__(self, url: str, setup_commands: tuple[bytes, ...] = ()) -> None:
        self.url = url
        self._setup = setup_commands
        self._proto: RespProtocol | None = None
        # (callback, time sent, replies it takes: the last one is its answer)
        self._waiting: deque[tuple[OnReply, float, int]] = deque()
        self._replies = 0  # replies already taken by the first waiting entry
        self._unsent: list[bytes] = []  # while connecting
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    def send(self, command: bytes, on_reply: OnReply, replies: int = 1) -> None:
        """Write packed commands now (or once connected); `on_reply` gets the last of
        their `replies` (a MULTI ... EXEC's EXEC: the ones before are +OK and +QUEUED)."""
        loop = asyncio.get_running_loop()
        if self._closed:
            on_reply(ConnectionError("Redis connection closed"))
            return
        self._waiting.append((on_reply, loop.time(), replies))
        proto = self._proto
        if proto is not None:
            proto.write(command)
            return
        self._unsent.append(command)
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch())

    async def call(self, *parts: Arg) -> Any:
        """One command, awaited; `-ERR` raises ReplyError."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answer(reply: Any) -> None:
            if not future.done():
                future.set_result(reply)

        self.send(pack(*parts), answer)
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def _connect(self) -> None:
        me = asyncio.current_task()
        try:
            proto = await connect(self.url, True, self._on_reply, self._lost, self._setup)
        except Exception:  # (a cancel comes from _lost or close, which fail the waiting)
            if self._connecting is me:
                self._connecting = None
                self._fail(ConnectionError("Redis connection failed"))
            return
        if self._connecting is not me:  # given up on meanwhile
            proto.abandon()
            return
        self._connecting = None
        unsent, self._unsent = self._unsent, []
        self._proto = proto
        if unsent:
            proto.write(b"".join(unsent))

    def _on_reply(self, reply: Any) -> None:
        self._replies += 1
        if self._replies < self._waiting[0][2]:
            return
        self._replies = 0
        _tell(self._waiting.popleft()[0], reply)

    async def _watch(self) -> None:
        """A hung Redis must not hold appends forever: fail them, reconnect on the next
        command. (One timer for the connection, not one per command.)"""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            if self._waiting and loop.time() - self._waiting[0][1] > REPLY_TIMEOUT_S:
                log.warning("redis reply overdue; reconnecting")
                self._lost()

    def _lost(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.abandon()
        if self._connecting is not None:
            self._connecting.cancel()  # fails what waits for it
            self._connecting = None
        self._fail(ConnectionError("Redis connection lost"))

    def _fail(self, error: Exception) -> None:
        self._unsent.clear()
        self._replies = 0
        waiting = self._waiting
        while waiting:
            _tell(waiting.popleft()[0], error)

    async def close(self) -> None:
        self._closed = True
        for task in (self._connecting, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._connecting = self._watchdog = None
        self._lost()


def _tell(on_reply: OnReply, reply: Any) -> None:
    try:
        on_reply(reply)
    except Exception:
        log.exception("redis reply handling failed")


def _nothing(*_: Any) -> None:
    return None
