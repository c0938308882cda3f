"""How the app is served: uvicorn's settings in one place, and its WebSocket protocol
with a direct path for the relay's hot loop.

`DirectWebSocket` is uvicorn's `websockets-sansio` protocol (frames parsed and built by
the `websockets` library) plus the ASGI extension `homepocket.direct`. Through it, a
socket app may

- take text messages as they are parsed (`read_directly`): the callback handles a
  message at once and returns True, or returns False and the message goes the usual
  ASGI way (`receive()`), in order. Measured: the queue, the task switch and the
  pause/resume of reading that `receive()` costs per message were a fifth of the
  relay's CPU at full load.
- write a text frame without a coroutine (`write_text`) while the transport has room.

It also keeps an idle socket small (a relay socket held 24 KB, now 10.7 KB;
relay/README.md "What an idle socket costs"): its receive queue and `writable` flag
hold no deques, and what only the handshake reads is let go at the accept.

Everything else (close, ping/pong, size limits, backpressure) is uvicorn's, and the
handshake's checks are the library's. An app that ignores the extension gets plain ASGI.

`HeaderTimeoutHttp` is uvicorn's httptools protocol with two additions:

- a connection whose request headers are not complete within HEADER_TIMEOUT_S is closed
  (uvicorn has no such timeout: half-sent requests, upgrades included, would hold a
  descriptor each for as long as the peer likes);
- an upgrade reaches `DirectWebSocket` as httptools parsed it, checked as the library
  checks it (infra/upgrade.py), not written out for the library to parse again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, State

from infra.settings import Settings
from infra.upgrade import Refusal, handshake_request, refusal_response, switching_protocols

try:
    from websockets.speedups import apply_mask
except ImportError:  # a build without the C extension
    from websockets.utils import apply_mask

DIRECT = "homepocket.direct"
# uvicorn logs each socket's accept (or refusal) and `websockets` its open and close at
# INFO: two or three lines per connection, formatted and scrubbed (infra/logs.py) at 13%
# of a handshake's CPU. Like an access log, which the server does not keep, they are
# shown only at LOG_LEVEL=DEBUG; warnings and errors as before. `websockets`' own lines
# never (at DEBUG they would quote frames).
SOCKET_LOG = logging.getLogger("homepocket.websocket")
LIBRARY_LOG = logging.getLogger("homepocket.websocket.library")
OPCODE_TEXT = int(Opcode.TEXT)
HEADER_TIMEOUT_S = 10.0
# uvicorn's protocol reads these only until the accept is sent.
HANDSHAKE_ONLY = (
    "_upgrade",
    "request",
    "response",
    "scope",
    "app",
    "app_state",
    "config",
    "default_headers",
    "root_path",
    "asgi_version",
)


class HeaderTimeoutHttp(HttpToolsProtocol):
    """Each request's headers (an upgrade's too) must be complete within
    HEADER_TIMEOUT_S of the connection opening or of the request's first byte."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        """To `DirectWebSocket` the request as httptools parsed it (infra/upgrade.py),
        where uvicorn writes it out for the library to parse again."""
        protocol_class = self.ws_protocol_class
        if not (isinstance(protocol_class, type) and issubclass(protocol_class, DirectWebSocket)):
            super().handle_websocket_upgrade()
            return
        try:
            request, headers = handshake_request(
                self.scope["method"], self.url, self.parser.get_http_version(), self.headers
            )
        except Refusal as refusal:
            self.transport.write(refusal_response(refusal, self.server_state.default_headers))
            self.transport.close()
            return
        self.connections.discard(self)
        protocol = protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        scheme = "wss" if self.scheme == "https" else "ws"
        protocol.adopt(self.transport, self.server, self.client, scheme)
        protocol.upgrade(request, headers)
        self.transport.set_protocol(protocol)


def frame_limit(max_op_bytes: int) -> int:
    """The largest frame a peer may send: a whole op in base64, plus room for JSON."""
    return max_op_bytes * 4 // 3 + 4096


class Inbox:
    """What the protocol queues for the app's one `receive()`: a list and a future,
    each made on first use. uvicorn's `asyncio.Queue` (three deques, and an Event with
    a fourth) was 3.4 KB of every idle socket. A message stays here until `receive()`
    takes it, so `empty()` means the app has taken everything (order on the direct
    path depends on it)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: list[Any] | None = None
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self.items is None:
            self.items = [item]
        else:
            self.items.append(item)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self.items

    def arrival(self) -> asyncio.Future[None]:
        if self.waiter is None or self.waiter.done():
            self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter


class Flag:
    """`asyncio.Event` as uvicorn's `writable` uses it, without its deque (760 bytes
    for each socket): waiters are a list made only while the transport is full."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class DirectWebSocket(WebSocketsSansIOProtocol):
    on_text: Callable[[bytes], bool] | None = None
    # Whole, unfragmented, masked text frames are parsed here (the common case at full
    # load: `websockets` spent 7.7 us on each, this 1.5 us); the library parses all
    # else, and is fed only whole frames, so it is always between two frames. It gets
    # everything from the first frame that would leave it mid-message (a fragment, a
    # frame it will refuse) or when it parsed bytes of its own (a client that spoke
    # before the handshake ended).
    _fast = False
    _partial = b""  # the start of a frame not yet whole
    # uvicorn closes with 1012 at shutdown and tells the app the same code a peer
    # closing with 1012 would: this says which it was (a refund is for the server's).
    shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True
        super().shutdown()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = SOCKET_LOG
        self.conn.logger = LIBRARY_LOG
        self.conn.debug = False
        self.queue: Inbox = Inbox()  # type: ignore[assignment]
        self.writable: Flag = Flag()  # type: ignore[assignment]

    async def receive(self) -> Any:
        """uvicorn's `receive`, on the Inbox: reading resumes once the app has taken
        everything queued."""
        inbox = self.queue
        while not inbox.items:
            await inbox.arrival()
        message = inbox.items.pop(0)
        if self.read_paused and not inbox.items:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    # The direct upgrade (HeaderTimeoutHttp): what the 101 needs, from the library's
    # checks, until the app accepts.
    _upgrade: tuple[str, str | None, str | None] | None = None

    def adopt(
        self,
        transport: asyncio.Transport,
        server: tuple[str, int | None] | None,
        client: tuple[str, int] | None,
        scheme: Any,
    ) -> None:
        """uvicorn's `connection_made`, with the addresses the HTTP side has read."""
        self.connections.add(self)
        self.transport = transport
        self.server, self.client, self.scheme = server, client, scheme

    def upgrade(self, request: Request, headers: list[tuple[bytes, bytes]]) -> None:
        """A request httptools parsed and infra.upgrade checked: the library's own checks
        decide (a refusal goes uvicorn's usual way), then the app runs."""
        try:
            self._upgrade = self.conn.process_request(request)
        except Exception:
            self.handle_connect(request)  # the library's refusal, written by uvicorn
            return
        self.request = request
        self.handshake_initiated = True
        # From now on the library parses frames (a peer may send some before the 101).
        self.conn.parser = Protocol.parse(self.conn)
        next(self.conn.parser)
        self._fast = True
        raw_path, _, query = request.path.partition("?")
        root = self.root_path
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": root,
            "path": root + unquote(raw_path),
            "raw_path": root.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": headers,
            "subprotocols": [
                token.strip()
                for header in request.headers.get_all("Sec-WebSocket-Protocol")
                for token in header.split(",")
            ],
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}, DIRECT: {"socket": self}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def send(self, message: Any) -> None:
        upgrade = self._upgrade
        if upgrade is None:
            await super().send(message)
            return
        if (
            message["type"] != "websocket.accept"
            or message.get("headers")
            or self.handshake_complete
            or self.initial_response is not None
        ):
            # Anything but a plain accept: uvicorn's way, from the library's response.
            self._upgrade = None
            self.response = self.conn.accept(self.request)
            await super().send(message)
            return
        if not self.writable.is_set():
            await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        self._upgrade = None
        if self.logger.isEnabledFor(logging.INFO):
            client, path = get_client_addr(self.scope), get_path_with_query_string(self.scope)
            self.logger.info('%s - "WebSocket %s" [accepted]', client, path)
        if self.transport.is_closing():
            return
        accept, extensions, protocol = upgrade
        subprotocol = message.get("subprotocol") or protocol
        response = switching_protocols(accept, extensions, subprotocol, self.default_headers)
        self.handshake_complete = True
        self.conn.state = State.OPEN
        self.transport.write(response)
        self.start_keepalive(fresh_parser=True)

    def start_keepalive(self, fresh_parser: bool = False) -> None:
        """Called as the accept goes out: what only the handshake reads goes (the request
        and response are 2-3 KB of headers), and the instance's dict (36 entries in a
        table grown for more) is copied to one its size (1.6 KB to 0.8). After the direct
        upgrade the frame parser is new already (`fresh_parser`)."""
        for name in HANDSHAKE_ONLY:
            self.__dict__.pop(name, None)
        self.__dict__ = dict(self.__dict__)
        if self._fast and not fresh_parser and not self.conn.reader.buffer:
            # The library's parser is the server's `parse`, whose frame keeps the request
            # (2.5 KB of headers) while it parses frames; no frame byte has reached it
            # (`_fast`), so it waits at the top of its frame loop, with nothing buffered,
            # exactly where a new frame parser starts.
            parser = Protocol.parse(self.conn)
            next(parser)
            self.conn.parser = parser
        super().start_keepalive()

    def data_received(self, data: bytes) -> None:
        if not self._fast:
            handshaking = not self.handshake_initiated
            super().data_received(data)
            # Nothing after the request's blank line: no frame bytes went to the library.
            if handshaking and self.handshake_initiated and data.endswith(b"\r\n\r\n"):
                self._fast = True
            return
        if self._partial:
            data, self._partial = self._partial + data, b""
        if self.conn.state is not State.OPEN or self.close_sent:  # early data, or closing
            self._to_library(data)
            return
        limit = self.conn.max_message_size
        pos, end = 0, len(data)
        while pos < end:
            if end - pos < 2:
                break
            head1, head2 = data[pos], data[pos + 1]
            length, at = head2 & 0x7F, pos + 2
            if length == 126:
                length, at = int.from_bytes(data[at : at + 2], "big"), at + 2
            elif length == 127:
                length, at = int.from_bytes(data[at : at + 8], "big"), at + 8
            whole = head1 & 0x80 and not head1 & 0x70 and head2 & 0x80  # FIN, no RSV, masked
            if not whole or (limit is not None and length > limit) or at > end:
                if at > end and whole:
                    break  # the extended length is not all here yet
                self._to_library(data[pos:])
                return
            stop = at + 4 + length
            if stop > end:
                break
            opcode = head1 & 0x0F
            if opcode == OPCODE_TEXT:
                self._text(apply_mask(data[at + 4 : stop], data[at : at + 4]))
            else:  # a control or binary frame, whole: the library stays between frames
                super().data_received(data[pos:stop])
            pos = stop
            if self.transport.is_closing():  # closed by uvicorn: what follows is moot
                return
            if self.conn.state is not State.OPEN or self.close_sent:
                self._to_library(data[pos:])
                return
        if pos < end:
            self._partial = data[pos:]

    def _to_library(self, data: bytes) -> None:
        self._fast = False
        if data:
            super().data_received(data)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.close_sent:  # the app's task has not run yet
            scope["extensions"][DIRECT] = {"socket": self}

    def read_directly(self, on_text: Callable[[bytes], bool]) -> None:
        """`on_text` gets each text message's bytes as they arrived (UTF-8 not yet
        checked: it decodes or parses them itself) and returns whether it took it."""
        self.on_text = on_text

    def send_receive_event_to_app(self) -> None:
        """A message the library parsed (fragments joined)."""
        if self.curr_msg_data_type != "text":
            super().send_receive_event_to_app()
            return
        frames, self.frames = self.frames, []
        self._text(frames[0] if len(frames) == 1 else b"".join(frames))

    def _text(self, data: bytes) -> None:
        """One text message: to the app as it is parsed if it takes it, else queued for
        `receive()` (or refused) as uvicorn does."""
        on_text = self.on_text
        # Straight to the app only while nothing waits in the queue: order is kept.
        if on_text is not None and not self.close_sent and self.queue.empty():
            # Bytes: what the app parses needs no decoded copy. What it leaves (invalid
            # UTF-8 included: uvicorn then closes with 1007) goes uvicorn's way below.
            try:
                if on_text(data):
                    return
            except Exception as exc:  # a failing app closes the socket, as in run_asgi
                self.logger.warning("websocket handler failed: %s", type(exc).__name__)
                self.on_text = None
                self.transport.close()
                return
        self.curr_msg_data_type = "text"
        self.frames = [data]
        super().send_receive_event_to_app()

    def write_text(self, text: str) -> bool:
        """Send one text frame now; False when it must wait (the transport is full or
        the socket closing): then use the ASGI `send`, which waits or raises."""
        if (
            self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
        ):
            return False
        data = text.encode()
        n = len(data)
        # A server's frame: FIN + text, unmasked, then the length (RFC 6455 s.5.2).
        if n < 126:
            head = bytes((0x81, n))
        elif n < 65536:
            head = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            head = b"\x81\x7f" + n.to_bytes(8, "big")
        self.transport.writelines((head, data))
        return True


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The server as `serve` runs it; tests and the demo change only what they must."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": HeaderTimeoutHttp,
        "ws": DirectWebSocket,
        "ws_per_message_deflate": False,  # ciphertext does not compress
        # The relay's heartbeat (docs/CONTRACT.md §4): ASGI apps cannot send ping frames, so uvicorn
        # pings every interval and drops a peer whose pong is late past the timeout.
        "ws_ping_interval": settings.heartbeat_interval_s,
        "ws_ping_timeout": max(1.0, settings.heartbeat_timeout_s - settings.heartbeat_interval_s),
        "ws_max_size": frame_limit(settings.max_op_bytes),
        "proxy_headers": False,  # TRUSTED_PROXIES decides, not uvicorn
        "server_header": False,
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": 5,
        # After a restart every phone reconnects at once; a connect the kernel's accept
        # queue has no room for is dropped and retried by TCP 1 s, 3 s, 7 s later. The
        # kernel caps this at net.core.somaxconn (4096 by default; docs/DEPLOY.md).
        "backlog": 16384,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
