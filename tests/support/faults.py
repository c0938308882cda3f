"""Faults on demand, for the fault tests and scripts/faults.py.

`FaultProxy` is a TCP proxy that breaks a backend's connections: pass bytes through,
delay them, hang (accept and hold every byte), reset every connection, or refuse new
ones. It runs in the caller's event loop in front of a real server (redis-server,
PostgreSQL, moto's S3 server). `private_redis` is a redis-server that may be frozen
(SIGSTOP) without touching anyone else's. `Device` is a relay client that behaves as
the contract asks a client to, and checks every answer it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.keys import DeviceKey
from tests.support.relay import payload
from tests.support.services import free_port, wait_port

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.delay_s = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, scheme: str, rest: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{rest}"

    async def start(self) -> FaultProxy:
        await self.accept()
        return self

    async def accept(self) -> None:
        """Listen again (after `refuse`)."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )

    async def refuse(self) -> None:
        """New connections are refused and open ones are reset."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.reset()

    def reset(self) -> None:
        """Cut every open connection at once (RST), both sides."""
        for pair in list(self._links):
            for writer in pair:
                _abort(writer)
        self._links.clear()

    def hang(self) -> None:
        """Connections are accepted and bytes are taken, but nothing is passed on."""
        self._flowing.clear()

    def resume(self) -> None:
        """Pass everything held, and everything after, through again."""
        self._flowing.set()

    async def close(self) -> None:
        self.resume()
        await self.refuse()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_w)
            return
        pair = (client_w, server_w)
        self._links.add(pair)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.ensure_future(self._pump(reader, writer, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                await self._flowing.wait()
                if pair not in self._links:
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            self._links.discard(pair)
            for each in pair:
                _abort(each)


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # an RST, not a polite FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A redis-server of this test alone: it may be frozen without touching the others."""
    port = free_port()
    args = [shutil.which("redis-server") or "redis-server", "--port", str(port)]
    args += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--maxmemory-policy", "noeviction"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


@dataclass
class Device:
    """A client as the contract asks: ops with ids, retried by id after an `error`,
    everything unacked sent again after a reconnect.

    With `resume`, it keeps its position (the highest seq up to which it has received
    or been acked every op) and epoch, and reconnects with `since`/`epoch`. With
    `session_s`, it closes each session itself after a random time in that range,
    once every send of it is answered, and with `move_p` it then goes to the next
    instance. `dropped` counts sends left unanswered on a socket closed under them
    (they are pending, and sent again on the next session)."""

    key: DeviceKey
    ws_urls: list[str]  # instances to try, in turn after a failed connect
    book_id: str
    target: int
    interval_s: float
    rng: random.Random
    payloads: dict[str, str] = field(default_factory=dict)  # id -> payload
    pending: dict[str, None] = field(default_factory=dict)  # unacked ids, in order
    acked: dict[str, int] = field(default_factory=dict)  # id -> seq
    problems: list[str] = field(default_factory=list)
    sends: int = 0
    answers: int = 0
    sessions: int = 0
    stopping: bool = False
    open_unanswered: int = -1  # sends unanswered on the session still open at the end
    resume: bool = False
    session_s: tuple[float, float] | None = None
    move_p: float = 0.0
    poll_s: float = 0.2  # how often an idle session looks at `stopping`
    epoch: str | None = None
    position: int = 0
    above: set[int] = field(default_factory=set)  # seqs had beyond `position`
    dropped: int = 0
    gaps: int = 0

    async def run(self) -> None:
        while not self.stopping:
            try:
                moved = await self._session()
            except (OSError, ConnectionClosed, InvalidStatus, TimeoutError):
                moved = True
            if moved:
                self.ws_urls.append(self.ws_urls.pop(0))  # the next instance, next time
            if not self.stopping:
                await asyncio.sleep(self.rng.uniform(0.1, 0.4))

    async def _send(self, ws: ClientConnection, sent: deque[str], op_id: str) -> None:
        message = {
            "type": "crdt_operation",
            "id": op_id,
            "payload": self.payloads[op_id],
            "timestamp": int(time.time()),
        }
        sent.append(op_id)
        self.sends += 1
        await ws.send(orjson.dumps(message).decode())

    def _had(self, seq: int) -> None:
        if seq > self.position:
            self.above.add(seq)
            while self.position + 1 in self.above:
                self.position += 1
                self.above.discard(self.position)

    async def _session(self) -> bool:
        """One connection; True when the next one should go to the next instance."""
        loop = asyncio.get_running_loop()
        url = f"{self.ws_urls[0]}/ws/relay/{self.book_id}"
        if self.resume:
            url += f"?since={self.position}"
            if self.epoch is not None and self.position > 0:
                url += f"&epoch={self.epoch}"
        ends = None if self.session_s is None else loop.time() + self.rng.uniform(*self.session_s)
        headers = {"Authorization": "Bearer " + self.key.token()}
        async with connect(
            url, additional_headers=headers, open_timeout=5, ping_interval=None, max_size=None
        ) as ws:
            frame = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(frame, str)
            first = orjson.loads(frame.split("\n", 1)[0])
            if first["type"] != "welcome":
                return True
            if self.resume and first["epoch"] != self.epoch and self.epoch is not None:
                self.position, self.above = 0, set()  # a new epoch starts again at seq 1
            self.epoch = first["epoch"]
            for line in frame.split("\n")[1:]:
                if line:
                    self._other(orjson.loads(line))
            self.sessions += 1
            sent: deque[str] = deque()
            retry_at: dict[str, float] = {}
            try:
                for op_id in list(self.pending):  # unacked after a reconnect: again
                    await self._send(ws, sent, op_id)
                next_new = loop.time()
                while True:
                    now = loop.time()
                    if self.stopping and not sent and not retry_at:
                        self.open_unanswered = 0
                        return False
                    leaving = ends is not None and now >= ends
                    if leaving and not sent:
                        return self.rng.random() < self.move_p
                    if (
                        not self.stopping
                        and not leaving
                        and len(self.payloads) < self.target
                        and now >= next_new
                    ):
                        op_id = f"{self.key.device_id[:6]}-{len(self.payloads)}"
                        self.payloads[op_id] = payload(24)
                        self.pending[op_id] = None
                        await self._send(ws, sent, op_id)
                        next_new = now + self.interval_s
                    for op_id, at in list(retry_at.items()):
                        if now >= at:
                            del retry_at[op_id]
                            await self._send(ws, sent, op_id)
                    wake = min([next_new, *retry_at.values(), *([ends] if ends else [])])
                    wake -= loop.time()
                    try:
                        frame = await asyncio.wait_for(ws.recv(), max(0.01, min(wake, self.poll_s)))
                    except TimeoutError:
                        continue
                    assert isinstance(frame, str)
                    for line in frame.split("\n"):
                        if line:
                            self._answer(orjson.loads(line), sent, retry_at, loop.time())
            finally:
                if self.stopping and self.open_unanswered < 0:
                    self.open_unanswered = len(sent)
                self.dropped += len(sent)

    def _answer(
        self, msg: dict[str, Any], sent: deque[str], retry_at: dict[str, float], now: float
    ) -> None:
        kind = msg["type"]
        if kind not in ("ack", "error"):
            self._other(msg)
            return
        self.answers += 1
        if not sent:
            self.problems.append(f"an answer to no send: {msg}")
            return
        expected = sent.popleft()
        if msg.get("id") != expected:
            self.problems.append(f"answer for {msg.get('id')} where {expected} was due: {msg}")
            return
        if kind == "error":
            if msg["code"] != "SERVICE_UNAVAILABLE":
                self.problems.append(f"unexpected error {msg}")
            if expected in self.pending:
                retry_at[expected] = now + self.rng.uniform(0.05, 0.3)
            return
        self._had(msg["seq"])
        first = self.acked.setdefault(expected, msg["seq"])
        if first != msg["seq"]:
            self.problems.append(f"{expected} acked with seq {msg['seq']}, first {first}")
        self.pending.pop(expected, None)

    def _other(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "crdt_operation":
            self._had(msg["seq"])
        elif msg["type"] == "sync_gap":
            self.gaps += 1
            self.epoch, self.position = msg["epoch"], msg["resume_seq"]
            self.above = {s for s in self.above if s > self.position}
