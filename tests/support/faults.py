"""A TCP proxy that breaks a backend's connections on demand, for fault tests and the
fault script: pass bytes through, delay them, hang (accept and hold every byte),
reset every connection, or refuse new ones. It runs in the caller's event loop in
front of a real server (redis-server, PostgreSQL, moto's S3 server).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from tests.support.services import free_port

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
