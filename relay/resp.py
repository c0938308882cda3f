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
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from infra.errors import Unavailable

log = logging.getLogger("homepocket.relay")

Arg = bytes | str | int
OnReply = Callable[[Any], None]
# BACKEND_TIMEOUT_S's default: connecting (with its set-up) and each reply must come
# within it, else the connection is treated as lost.
TIMEOUT_S = 5.0


class ReplyError(Exception):
    """Redis answered `-ERR ...` (the text is Redis's, never a payload)."""


class RedisUnavailable(Unavailable):
    """Redis refused, dropped the connection or did not answer in time: `503
    SERVICE_UNAVAILABLE` for a call, an `error` for an op. `reason` is for logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__("SERVICE_UNAVAILABLE", "redis")
        self.reason = reason


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
    timeout_s: float = TIMEOUT_S,
) -> RespProtocol:
    """Connect, authenticate, pick the database the URL names and run `setup_commands`,
    all within `timeout_s`; then replies go to `on_reply`. A loss during set-up raises;
    after it, `on_lost` is called."""
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
    async with asyncio.timeout(timeout_s):
        await opening
        return await _set_up(proto, parts, select_db, setup, setup_commands, on_reply, on_lost)


async def _set_up(
    proto: RespProtocol,
    parts: Any,
    select_db: bool,
    setup: deque[asyncio.Future[Any]],
    setup_commands: tuple[bytes, ...],
    on_reply: OnReply,
    on_lost: Callable[[], None],
) -> RespProtocol:
    loop = asyncio.get_running_loop()
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
            if isinstance(await future, ReplyError):
                raise ConnectionError("Redis refused the connection set-up")
    except BaseException:
        proto.close()
        raise
    if proto.transport is None:
        raise ConnectionError("Redis closed the connection")
    proto.on_reply, proto.on_lost = on_reply, on_lost
    return proto


class _Link:
    """One connection of a CommandConnection and everything sent on it: the bytes still
    to write (while it connects) and, in order, who waits for each reply. A link that
    failed is never used again, so a reply can only reach a command sent on its own
    connection."""

    __slots__ = ("proto", "replies", "task", "unsent", "waiting")

    def __init__(self) -> None:
        self.proto: RespProtocol | None = None
        # (callback, time sent, replies it takes: the last one is its answer)
        self.waiting: deque[tuple[OnReply, float, int]] = deque()
        self.replies = 0  # replies already taken by the first waiting entry
        self.unsent: list[bytes] = []  # while connecting
        self.task: asyncio.Task[None] | None = None  # connecting


class CommandConnection:
    """Pipelined commands on one connection, each answered through its callback in the
    order sent (a `ReplyError`, or a `RedisUnavailable` when it failed). Commands sent
    while there is no connection wait for the next one, made on demand; each new
    connection first runs `setup_commands` (e.g. SCRIPT LOAD).

    The failure path: a connection that is lost, refused, or late with a reply by more
    than `timeout_s` is dropped with everything waiting on it, each told once. It is
    detached before anyone is told, so a command sent from inside those answers starts
    a new connection of its own and can never be matched with a reply meant for
    another; and a link fails at most once (a second failure of the same link is a
    no-op), so the path cannot be re-entered.
    """

    def __init__(
        self, url: str, setup_commands: tuple[bytes, ...] = (), timeout_s: float = TIMEOUT_S
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._setup = setup_commands
        self._link: _Link | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> RespProtocol | None:
        """The live connection, if there is one (tests and diagnostics)."""
        return self._link.proto if self._link is not None else None

    def send(self, command: bytes, on_reply: OnReply, replies: int = 1) -> None:
        """Write packed commands now (or once connected); `on_reply` gets the last of
        their `replies` (a MULTI ... EXEC's EXEC: the ones before are +OK and +QUEUED)."""
        loop = asyncio.get_running_loop()
        if self._closed:  # told on the next turn: a send never answers from inside itself
            loop.call_soon(_tell, on_reply, RedisUnavailable("Redis connection closed"))
            return
        link = self._link
        if link is None:
            link = self._link = _Link()
            link.task = asyncio.ensure_future(self._connect(link))
            if self._watchdog is None:
                self._watchdog = asyncio.ensure_future(self._watch())
        link.waiting.append((on_reply, loop.time(), replies))
        if link.proto is not None:
            link.proto.write(command)
        else:
            link.unsent.append(command)

    async def call(self, *parts: Arg) -> Any:
        """One command, awaited; `-ERR` raises ReplyError, a failure RedisUnavailable."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answer(reply: Any) -> None:
            if not future.done():
                future.set_result(reply)

        self.send(pack(*parts), answer)
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def _connect(self, link: _Link) -> None:
        try:
            proto = await connect(
                self.url,
                True,
                partial(self._on_reply, link),
                partial(self._fail, link, "Redis connection lost"),
                self._setup,
                self.timeout_s,
            )
        except asyncio.CancelledError:  # the link failed meanwhile: it told its waiters
            raise
        except Exception:
            link.task = None
            self._fail(link, "Redis connection failed")
            return
        link.task = None
        if link is not self._link:  # failed meanwhile (its waiters are told)
            proto.abandon()
            return
        link.proto = proto
        if link.unsent:
            unsent, link.unsent = link.unsent, []
            proto.write(b"".join(unsent))

    def _on_reply(self, link: _Link, reply: Any) -> None:
        if link is not self._link:
            return  # a late reply of a connection given up on
        if not link.waiting:  # a reply nobody asked for: the stream is out of step
            log.warning("unexpected reply from Redis; reconnecting")
            self._fail(link, "Redis connection out of step")
            return
        link.replies += 1
        on_reply, _, replies = link.waiting[0]
        if link.replies < replies:
            return
        link.replies = 0
        link.waiting.popleft()
        _tell(on_reply, reply)

    async def _watch(self) -> None:
        """A hung Redis must not hold commands forever: fail them, reconnect on the next
        command. (One timer for the connection, not one per command.)"""
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            link = self._link
            if link is not None and link.waiting:
                if loop.time() - link.waiting[0][1] > self.timeout_s:
                    log.warning("redis reply overdue; reconnecting")
                    self._fail(link, "Redis did not answer in time")

    def _fail(self, link: _Link, why: str) -> None:
        """Drop the link and tell each of its waiters, once. Detached first: whatever
        the answers send goes on a new link."""
        if link is not self._link:
            return  # failed already
        self._link = None
        proto, link.proto = link.proto, None
        if proto is not None:
            proto.abandon()
        task, link.task = link.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        waiting, link.waiting = link.waiting, deque()
        link.unsent = []
        for on_reply, _, _ in waiting:
            _tell(on_reply, RedisUnavailable(why))

    async def close(self) -> None:
        self._closed = True
        watchdog, self._watchdog = self._watchdog, None
        link = self._link
        task = link.task if link is not None else None
        for each in (task, watchdog):
            if each is not None:
                each.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await each
        if self._link is not None:
            self._fail(self._link, "Redis connection closed")


def _tell(on_reply: OnReply, reply: Any) -> None:
    try:
        on_reply(reply)
    except Exception:
        log.exception("redis reply handling failed")


def _nothing(*_: Any) -> None:
    return None
