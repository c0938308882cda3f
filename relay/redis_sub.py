"""One pub/sub connection per process, spoken in plain RESP on an asyncio stream.

A minimal client: SUBSCRIBE waits for Redis's confirmation (so a reader that starts
after it cannot miss an op), messages go straight to a callback, and a dropped
connection is reported, then re-made with backoff and every channel resubscribed.
Never logs what it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

log = logging.getLogger("homepocket.relay")
CONFIRM_TIMEOUT_S = 5.0


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Subscriber:
    def __init__(
        self,
        url: str,
        on_message: Callable[[bytes, bytes], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.url = url
        self.on_message = on_message
        self.on_lost = on_lost
        self.channels: set[bytes] = set()
        self._waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        reader = await self._connect()
        self._task = asyncio.ensure_future(self._run(reader))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    async def _connect(self) -> asyncio.StreamReader:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(parts.path)
        else:
            tls = ssl.create_default_context() if parts.scheme == "rediss" else None
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "localhost", parts.port or 6379, ssl=tls),
                5,
            )
        if parts.password is not None:
            auth = [b"AUTH"]
            if parts.username:
                auth.append(unquote(parts.username).encode())
            auth.append(unquote(parts.password).encode())
            writer.write(_command(*auth))
            reply = await asyncio.wait_for(reader.readline(), 5)
            if not reply.startswith(b"+"):
                writer.close()
                raise ConnectionError("Redis refused the credentials")
        self._writer = writer
        if self.channels:
            writer.write(_command(b"SUBSCRIBE", *sorted(self.channels)))
        self._connected.set()
        return reader

    async def subscribe(self, chan: bytes) -> None:
        """Returns once Redis confirmed: every later publish on `chan` will arrive."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(chan, []).append(future)
        self.channels.add(chan)
        await asyncio.wait_for(self._connected.wait(), CONFIRM_TIMEOUT_S)
        assert self._writer is not None
        self._writer.write(_command(b"SUBSCRIBE", chan))
        await asyncio.wait_for(future, CONFIRM_TIMEOUT_S)

    async def unsubscribe(self, chan: bytes) -> None:
        self.channels.discard(chan)
        if self._writer is not None and self._connected.is_set():
            self._writer.write(_command(b"UNSUBSCRIBE", chan))

    async def _run(self, reader: asyncio.StreamReader) -> None:
        delay = 0.1
        while True:
            try:
                await self._read(reader)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("relay subscriber connection lost")
            self._connected.clear()
            self.on_lost()
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    reader = await self._connect()
                    delay = 0.1
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("relay subscriber reconnect failed; retrying")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            header = await reader.readline()
            if not header:
                raise ConnectionError("closed")
            if header[:1] != b"*":
                continue  # a stray reply (+OK, -ERR, :n): nothing to route
            items: list[bytes | int | None] = []
            for _ in range(int(header[1:])):
                line = await reader.readline()
                if line[:1] == b"$":
                    size = int(line[1:])
                    items.append(None if size < 0 else (await reader.readexactly(size + 2))[:-2])
                elif line[:1] == b":":
                    items.append(int(line[1:]))
                else:
                    raise ConnectionError("unexpected reply")
            kind = items[0]
            if kind == b"message" and isinstance(items[1], bytes) and isinstance(items[2], bytes):
                try:
                    self.on_message(items[1], items[2])
                except Exception:
                    log.exception("relay message handling failed")
            elif kind == b"subscribe" and isinstance(items[1], bytes):
                for future in self._waiting.pop(items[1], []):
                    if not future.done():
                        future.set_result(None)
