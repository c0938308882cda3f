"""One pub/sub connection per process (relay.resp: replies parsed by hiredis in
`data_received`, messages handed to a callback there, no task per message).

SUBSCRIBE waits for Redis's confirmation (so a reader that starts after it cannot miss
an op), and a dropped connection is reported, then re-made with backoff and every
channel resubscribed. Never logs what it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from relay.resp import RespProtocol, connect, pack

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
        self._proto: RespProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._dropped = asyncio.Event()

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.abandon()

    async def _connect(self) -> None:
        self._dropped.clear()
        proto = await connect(self.url, False, self._on_reply, self._dropped.set)  # no dbs
        self._proto = proto
        if self.channels:
            proto.write(pack(b"SUBSCRIBE", *sorted(self.channels)))
        self._connected.set()

    async def subscribe(self, chan: bytes) -> None:
        """Returns once Redis confirmed: every later publish on `chan` will arrive."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(chan, []).append(future)
        self.channels.add(chan)
        await asyncio.wait_for(self._connected.wait(), CONFIRM_TIMEOUT_S)
        assert self._proto is not None
        self._proto.write(pack(b"SUBSCRIBE", chan))
        await asyncio.wait_for(future, CONFIRM_TIMEOUT_S)

    async def unsubscribe(self, chan: bytes) -> None:
        self.channels.discard(chan)
        if self._proto is not None and self._connected.is_set():
            self._proto.write(pack(b"UNSUBSCRIBE", chan))

    async def _run(self) -> None:
        delay = 0.1
        while True:
            await self._dropped.wait()
            log.warning("relay subscriber connection lost")
            self._connected.clear()
            self._proto = None
            self.on_lost()
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await self._connect()
                    delay = 0.1
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("relay subscriber reconnect failed; retrying")

    def _on_reply(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # a stray reply (+OK, -ERR): nothing to route
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
