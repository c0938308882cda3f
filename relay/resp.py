"""A minimal Redis protocol (RESP2) client for the relay's hot path: one connection,
commands packed by hand and pipelined (everything asked in one loop turn goes out as one
write), replies matched to callers in order.

Measured here, redis-py spent most of an append's CPU packing commands; this does the
same work in a few lines. Used for the backlog scripts and the subscriber; everything
else goes through redis-py. Never logs what it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

Arg = bytes | str | int
REPLY_TIMEOUT_S = 5.0  # a reply later than this: the connection is treated as lost


class ReplyError(Exception):
    """Redis answered `-ERR ...` (the text is Redis's, never a payload)."""


def pack(*parts: Arg) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b":":
        return int(rest)
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [await read_reply(reader) for _ in range(size)]
    if kind == b"+":
        return rest
    if kind == b"-":
        return ReplyError(rest.decode("utf-8", "replace"))
    raise ConnectionError("unexpected reply from Redis")


async def open_stream(
    url: str, select_db: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, authenticate and pick the database the URL names."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(parts.path), 5)
    else:
        tls = ssl.create_default_context() if parts.scheme == "rediss" else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "localhost", parts.port or 6379, ssl=tls),
            5,
        )
    setup: list[bytes] = []
    if parts.password is not None:
        user = [unquote(parts.username).encode()] if parts.username else []
        setup.append(pack(b"AUTH", *user, unquote(parts.password).encode()))
    db = parts.path.lstrip("/")
    if select_db and db.isdigit() and db != "0":
        setup.append(pack(b"SELECT", db))
    for command in setup:
        writer.write(command)
        reply = await asyncio.wait_for(read_reply(reader), 5)
        if isinstance(reply, ReplyError):
            writer.close()
            raise ConnectionError("Redis refused the connection set-up")
    return reader, writer


class CommandConnection:
    """Pipelined commands on one connection; reconnects on the next call after a loss."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def call(self, *parts: Arg) -> Any:
        if self._writer is None:
            async with self._lock:
                if self._writer is None:
                    await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(pack(*parts))
        self._waiting.append((future, loop.time()))
        result = await future
        if isinstance(result, ReplyError):
            raise result
        return result

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._writer is not None and out:
            self._writer.write(b"".join(out))

    async def _connect(self) -> None:
        self._reader, self._writer = await open_stream(self.url, select_db=True)
        self._task = asyncio.ensure_future(self._read_forever(self._reader))
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        """A hung Redis must not hold appends forever: fail them, reconnect on next call.
        (One timer for the connection, not one per command.)"""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            if self._waiting and loop.time() - self._waiting[0][1] > REPLY_TIMEOUT_S:
                if self._task is not None:
                    self._task.cancel()
                self._lost()

    async def _read_forever(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await read_reply(reader)
                future, _ = self._waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._lost()

    def _lost(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self._out.clear()
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("Redis connection lost"))

    async def close(self) -> None:
        for task in (self._task, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._lost()
