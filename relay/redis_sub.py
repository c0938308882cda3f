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
from collections.abc import Callable

from relay.resp import open_stream, pack, read_reply

log = logging.getLogger("homepocket.relay")
CONFIRM_TIMEOUT_S = 5.0


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
        reader, writer = await open_stream(self.url, select_db=False)  # pub/sub ignores dbs
        self._writer = writer
        if self.channels:
            writer.write(pack(b"SUBSCRIBE", *sorted(self.channels)))
        self._connected.set()
        return reader

    async def subscribe(self, chan: bytes) -> None:
        """Returns once Redis confirmed: every later publish on `chan` will arrive."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(chan, []).append(future)
        self.channels.add(chan)
        await asyncio.wait_for(self._connected.wait(), CONFIRM_TIMEOUT_S)
        assert self._writer is not None
        self._writer.write(pack(b"SUBSCRIBE", chan))
        await asyncio.wait_for(future, CONFIRM_TIMEOUT_S)

    async def unsubscribe(self, chan: bytes) -> None:
        self.channels.discard(chan)
        if self._writer is not None and self._connected.is_set():
            self._writer.write(pack(b"UNSUBSCRIBE", chan))

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
            if self._writer is not None:
                self._writer.close()
                self._writer = None
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
            reply = await read_reply(reader)
            if not isinstance(reply, list) or len(reply) < 3:
                continue  # a stray reply (+OK, -ERR): nothing to route
            kind, chan, data = reply[0], reply[1], reply[2]
            if kind == b"message":
                try:
                    self.on_message(chan, data)
                except Exception:
                    log.exception("relay message handling failed")
            elif kind == b"subscribe":
                for future in self._waiting.pop(chan, []):
                    if not future.done():
                        future.set_result(None)
