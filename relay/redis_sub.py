"""One pub/sub connection per process (relay.resp: replies parsed by hiredis in
`data_received`, messages handed to a callback there, no task per message).

SUBSCRIBE waits for Redis's confirmation (so a reader that starts after it cannot miss
an op), and a dropped connection is reported, then re-made with backoff and every
channel resubscribed. A new connection counts as made only once Redis answered a PING
on it: a bare TCP connect (a stalled Redis, a proxy in front of a dead one) does not
reset the backoff. Never logs what it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from relay.resp import TIMEOUT_S, RespProtocol, connect, pack

log = logging.getLogger("homepocket.relay")
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
PING = pack(b"PING")


class Subscriber:
    def __init__(
        self,
        url: str,
        on_message: Callable[[bytes, bytes], None],
        on_lost: Callable[[], None],
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
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
        # (no SELECT: pub/sub ignores databases; PING: Redis really answers)
        proto = await connect(
            self.url, False, self._on_reply, self._dropped.set, (PING,), self.timeout_s
        )
        self._proto = proto
        if self.channels:
            proto.write(pack(b"SUBSCRIBE", *sorted(self.channels)))
        self._connected.set()

    async def subscribe(self, chan: bytes) -> None:
        """Returns once Redis confirmed: every later publish on `chan` will arrive."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(chan, []).append(future)
        self.channels.add(chan)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._connected.wait()
                assert self._proto is not None
                self._proto.write(pack(b"SUBSCRIBE", chan))
                await future
        except BaseException:
            futures = self._waiting.get(chan)
            if futures is not None and future in futures:
                futures.remove(future)
                if not futures:
                    del self._waiting[chan]
            raise

    async def unsubscribe(self, chan: bytes) -> None:
        self.channels.discard(chan)
        if self._proto is not None and self._connected.is_set():
            self._proto.write(pack(b"UNSUBSCRIBE", chan))

    async def _run(self) -> None:
        while True:
            await self._dropped.wait()
            log.warning("relay subscriber connection lost")
            self._connected.clear()
            self._proto = None
            self.on_lost()
            await self._reconnect()

    async def _reconnect(self) -> None:
        """Back off (doubling, up to MAX_DELAY_S) until a connection answers. One
        warning for the outage, not one per attempt."""
        delay = FIRST_DELAY_S
        attempts = 0
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            attempts += 1
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if attempts == 1 else logging.DEBUG
                log.log(
                    level,
                    "relay subscriber reconnect failed; retrying with backoff",
                    extra={"error_type": type(exc).__name__, "attempts": attempts},
                )
                continue
            if attempts > 1:
                log.info("relay subscriber reconnected", extra={"attempts": attempts})
            return

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
