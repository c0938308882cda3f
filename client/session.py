"""The relay socket (docs/CONTRACT.md §4) for one device: connect, resume, relay ops, reconnect.

Never gives up on a transient failure (jittered exponential backoff, 1 s … 60 s) and
never reconnects after 4403 (revoked / not a member) or 4410 (book erased). Never puts
a token in the URL: it goes in the Authorization header.

Wire handling in one place (`_handle`): welcome, crdt_operation, ack, sync_gap,
sync_complete, presence, pairing_completed, error, pong; unknown types are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

if TYPE_CHECKING:
    from client.device import Device

log = logging.getLogger("homepocket.client")

# Close codes after which reconnecting cannot help (contract §4): the device was revoked or is
# not a member, or the book is gone. 4409 means another socket of this device took our
# place; reconnecting would only push that one out in turn.
FINAL_CLOSE_CODES = {4403: "revoked or not a member", 4410: "book erased", 4409: "replaced"}


@dataclass
class Backoff:
    """Jittered exponential waits, always within [base, cap] (1 s … 60 s by default):
    attempt n waits a random time in [max(base, c/2), c] with c = min(cap, base·2^(n+1)),
    so a restarted server is not hit by every phone in the same second."""

    base_s: float = 1.0
    cap_s: float = 60.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = float(min(self.cap_s, self.base_s * 2 ** (self.attempt + 1)))
        floor = max(self.base_s, ceiling / 2)
        self.attempt += 1
        return floor + self.rng.random() * (ceiling - floor)

    def reset(self) -> None:
        self.attempt = 0


def ws_url(server_url: str, book_id: str, since: int, epoch: str | None) -> str:
    base = server_url.rstrip("/")
    base = "wss://" + base[8:] if base.startswith("https://") else "ws://" + base[7:]
    query: dict[str, Any] = {"since": since}
    if epoch is not None and since > 0:
        query["epoch"] = epoch
    return f"{base}/ws/relay/{book_id}?{urlencode(query)}"


class RelaySession:
    """Runs until `stop()` or a final close code; `live` is set between sync_complete
    and the next disconnect."""

    def __init__(
        self,
        device: Device,
        *,
        backoff: Backoff | None = None,
        token_lifetime_s: int = 600,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.device = device
        self.backoff = backoff or Backoff()
        self.token_lifetime_s = token_lifetime_s
        self.on_event = on_event or (lambda kind, msg: None)
        self.live = asyncio.Event()
        self.stopped_reason: str | None = None
        self.online_peers: set[str] = set()
        self.connects = 0
        self.tokens_refreshed = 0
        self.received_bytes = 0  # text the server sent, over every connection
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._need_state = False  # we hit a sync_gap that no snapshot fills
        self._wake = asyncio.Event()
        self._sent: set[str] = set()
        self._token_exp = 0

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relay-{self.device.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.live.clear()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while not self._stopping:
            code, reason = await self._connect_once()
            self.live.clear()
            self._ws = None
            if code in FINAL_CLOSE_CODES:
                self.stopped_reason = f"{code} {FINAL_CLOSE_CODES[code]}"
                self.on_event("stopped", {"code": code, "reason": reason})
                return
            delay = self.backoff.next_delay()
            if code == 4429 and "retry_after=" in reason:
                with contextlib.suppress(ValueError):
                    delay = max(delay, float(reason.rsplit("retry_after=", 1)[1]))
            self.on_event("reconnecting", {"code": code, "delay_s": round(delay, 2)})
            await asyncio.sleep(delay)

    async def _connect_once(self) -> tuple[int | None, str]:
        device = self.device
        position = device.state.position
        url = ws_url(device.server_url, device.require_book(), position.seq, position.epoch)
        token = self._mint()
        try:
            async with connect(
                url,
                additional_headers={"Authorization": "Bearer " + token},
                open_timeout=10,
                max_size=8 * 2**20,
            ) as ws:
                self._ws = ws
                self.connects += 1
                helpers = [
                    asyncio.create_task(self._refresh_tokens(ws)),
                    asyncio.create_task(self._writer(ws)),
                ]
                try:
                    async for frame in ws:
                        if isinstance(frame, bytes):
                            continue  # the server sends text only
                        self.received_bytes += len(frame)
                        for line in frame.split("\n"):
                            if line.strip():
                                await self._handle_line(line)
                finally:
                    for task in helpers:
                        task.cancel()
                    await asyncio.gather(*helpers, return_exceptions=True)
                return ws.close_code, ws.close_reason or ""
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return None, type(exc).__name__

    def _mint(self) -> str:
        """A fresh token; remembers when it expires (whole seconds, as in the claims)."""
        now = time.time()
        self._token_exp = int(now) + self.token_lifetime_s
        return self.device.identity.token(self.device.book_id, self.token_lifetime_s, now)

    async def _refresh_tokens(self, ws: ClientConnection) -> None:
        """Send a fresh token well before the current one expires (docs/CONTRACT.md §4 `auth`): a
        quarter of the lifetime ahead, at least one second, at most a minute."""
        margin = min(60.0, max(1.0, self.token_lifetime_s / 4))
        while True:
            await asyncio.sleep(max(0.0, self._token_exp - margin - time.time()))
            await ws.send(json.dumps({"type": "auth", "token": self._mint()}))
            self.tokens_refreshed += 1

    async def _writer(self, ws: ClientConnection) -> None:
        """Send every op of the outbox not yet sent on this connection, once live.

        The outbox keeps each op until its ack, so a reconnect sends it again with the
        same id: the server acks a retry with the first seq and relays it only once."""
        sent = self._sent = set()
        while True:
            await self.live.wait()
            # Cleared before the pass, not after: an op queued while a send is awaited
            # sets it again, so the next pass picks that op up.
            self._wake.clear()
            device = self.device
            if device.owe_state:
                device.owe_state = False
                device.queue_state(request=False)
            for pending in list(device.state.outbox.values()):
                if pending.op_id in sent:
                    continue
                sent.add(pending.op_id)
                message = {
                    "type": "crdt_operation",
                    "id": pending.op_id,
                    "payload": pending.payload_b64,
                    "timestamp": pending.timestamp,
                }
                await ws.send(json.dumps(message))
            sent.intersection_update(device.state.outbox)
            await self._wake.wait()

    def wake(self) -> None:
        self._wake.set()

    def _resend(self, op_id: str) -> None:
        self._sent.discard(op_id)
        self.wake()

    # --- messages ----------------------------------------------------------------------

    async def _handle_line(self, line: str) -> None:
        """The server is trusted to relay, not to be well-formed: a message we cannot
        read is skipped, never allowed to end the session."""
        try:
            msg = json.loads(line)
            if isinstance(msg, dict):
                await self._handle(msg)
        except (ValueError, KeyError, TypeError):
            log.warning("skipped a malformed message from the server")

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        device = self.device
        if kind == "welcome":
            self.backoff.reset()
            self.online_peers = set(msg.get("online") or [])
        elif kind == "crdt_operation":
            device.receive_op(msg)
        elif kind == "ack":
            device.acked(str(msg.get("id")), int(msg["seq"]))
        elif kind == "sync_gap":
            if not await device.handle_gap(msg):
                self._need_state = True
        elif kind == "sync_complete":
            if self._need_state:
                # A gap no snapshot fills: give peers everything we have and ask for
                # theirs, inside the ciphertext, so the server cannot tell it from an op.
                self._need_state = False
                device.queue_state(request=True)
            device.synced()
            self.live.set()
            self.wake()
        elif kind == "presence":
            peer, status = str(msg.get("device_id")), msg.get("status")
            if status == "online":
                self.online_peers.add(peer)
            else:
                self.online_peers.discard(peer)
        elif kind == "error":
            if msg.get("code") in ("RATE_LIMIT_EXCEEDED", "SERVICE_UNAVAILABLE") and msg.get("id"):
                # Refused for now, not for good (limited, or the relay's store briefly
                # unavailable): send it again, with the same id, after a pause.
                asyncio.get_running_loop().call_later(5.0, self._resend, str(msg["id"]))
            else:
                device.refused(msg)
        if isinstance(kind, str):
            self.on_event(kind, msg)
