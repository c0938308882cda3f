"""`infra.serving.DirectWebSocket` against the protocol it extends: fed the same bytes,
cut anywhere, it must give the app the same messages in the same order, write the same
bytes back and close the same way, whatever mix of frames a peer sends (whole text
frames parsed by it; fragments, control, binary, oversized and broken frames by the
`websockets` library)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from infra.serving import DIRECT, DirectWebSocket

LIMIT = 600  # the largest message the server takes (ws_max_size)
# The toy app below fails as the peer's bytes make it (a send after a close): what uvicorn
# logs of it is the protocol's business, compared here, not an unhandled server error.
pytestmark = pytest.mark.toy_app_errors


class Transport(asyncio.Transport):
    def __init__(self, on_close: Any) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.on_close = on_close

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.written += chunk

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.on_close)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name in ("peername", "sockname") else default


def handshake() -> bytes:
    client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"))
    client.send_request(client.connect())
    return b"".join(client.data_to_send())


async def opened(
    app: Any, protocol: type[WebSocketsSansIOProtocol], **options: Any
) -> tuple[Any, Transport, ServerState]:
    """One connection of `protocol` driven by hand: the handshake in, the app's first
    turns run (its accept, if it accepts, written)."""
    config = uvicorn.Config(app, ws=protocol, ws_ping_interval=None, log_config=None, **options)
    config.load()
    state = ServerState()
    server = protocol(config, state, {}, asyncio.get_running_loop())
    transport = Transport(lambda: server.connection_lost(None))
    server.connection_made(transport)
    server.data_received(handshake())
    for _ in range(5):
        await asyncio.sleep(0)
    return server, transport, state


async def serve(protocol: type[WebSocketsSansIOProtocol], chunks: list[bytes], direct: bool) -> Any:
    """What an app got and what the server wrote, fed `chunks` after the handshake."""
    texts: list[str] = []
    others: list[Any] = []

    def on_text(data: bytes) -> bool:
        try:
            text = data.decode()
        except UnicodeDecodeError:  # left to `receive`, as the relay leaves what it can't parse
            return False
        if text.startswith("q"):  # the app leaves some to `receive`, as the relay does
            return False
        texts.append(text)
        return True

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if direct and DIRECT in scope["extensions"]:
            scope["extensions"][DIRECT]["socket"].read_directly(on_text)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                others.append(("disconnect", message.get("code")))
                return
            if message.get("text") is not None:
                texts.append(message["text"])
            else:
                others.append(("bytes", message["bytes"]))

    server, transport, state = await opened(app, protocol, ws_max_size=LIMIT)
    transport.written.clear()  # the 101 response carries a date: compare what follows
    for chunk in chunks:
        if transport.closing:
            break
        try:
            server.data_received(chunk)
        except Exception as exc:  # the event loop would close the transport
            others.append(("raised", type(exc).__name__))
            break
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    for task in list(state.tasks):
        task.cancel()
    return texts, others, bytes(transport.written), transport.closing


def frame(kind: str, body: bytes) -> bytes:
    opcode = {
        "text": Opcode.TEXT,
        "binary": Opcode.BINARY,
        "ping": Opcode.PING,
        "pong": Opcode.PONG,
        "close": Opcode.CLOSE,
    }[kind]
    return Frame(opcode, body).serialize(mask=True)


text_body = st.text(max_size=LIMIT // 4).map(str.encode) | st.sampled_from(
    [b"q: left to receive", b"", b"x" * 200, b"x" * LIMIT]
)
fine = st.one_of(
    st.tuples(st.just("text"), text_body),
    st.tuples(st.just("binary"), st.binary(max_size=300)),
    st.tuples(st.sampled_from(["ping", "pong"]), st.binary(max_size=125)),
)
refused = st.one_of(
    st.tuples(
        st.just("text"), st.sampled_from([b"o" * (LIMIT + 1), b"y" * 70_000, b"\xff not utf-8"])
    ),
    st.tuples(st.sampled_from(["unmasked", "reserved bit"]), st.binary(max_size=20)),
)


def encode(kind: str, body: bytes) -> bytes:
    if kind == "fragments":
        half = len(body) // 2
        first = Frame(Opcode.TEXT, body[:half], fin=False).serialize(mask=True)
        return first + Frame(Opcode.CONT, body[half:]).serialize(mask=True)
    if kind == "unmasked":
        return Frame(Opcode.TEXT, body).serialize(mask=False)
    if kind == "reserved bit":
        raw = bytearray(frame("text", body))
        raw[0] |= 0x40
        return bytes(raw)
    return frame(kind, body)


def cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(
        fine
        | st.tuples(st.just("fragments"), text_body)
        | st.tuples(st.just("close"), st.just(b"\x03\xe8")),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=8),
    direct=st.booleans(),
)
def test_same_messages_writes_and_closes_as_the_library(
    messages: list[tuple[str, bytes]], cuts: list[int], direct: bool
) -> None:
    chunks = cut(b"".join(encode(kind, body) for kind, body in messages), cuts)
    ours = asyncio.run(serve(DirectWebSocket, chunks, direct))
    theirs = asyncio.run(serve(WebSocketsSansIOProtocol, chunks, False))
    assert ours == theirs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(fine, max_size=6),
    bad=refused,
    after=st.lists(fine, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=8),
    direct=st.booleans(),
)
def test_a_refused_frame_closes_as_the_library_does_after_what_came_before(
    before: list[tuple[str, bytes]],
    bad: tuple[str, bytes],
    after: list[tuple[str, bytes]],
    cuts: list[int],
    direct: bool,
) -> None:
    """uvicorn drops what precedes a refused frame in the same read; a frame-by-frame
    feed is the reference, since where reads split is up to the network."""
    frames = [encode(kind, body) for kind, body in [*before, bad, *after]]
    ours = asyncio.run(serve(DirectWebSocket, cut(b"".join(frames), cuts), direct))
    theirs = asyncio.run(serve(WebSocketsSansIOProtocol, frames, False))
    assert ours == theirs


def test_whole_text_frames_skip_the_library_parser() -> None:
    """The point of the class: whole text frames never reach the library's parser;
    a ping among them does, and the text frames after it still do not."""
    parsed: list[Any] = []

    class Watched(DirectWebSocket):
        def handle_events(self) -> None:
            events = self.conn.events_received()
            parsed.extend(e.opcode for e in events if isinstance(e, Frame))
            self.conn.events.extend(events)  # put back for uvicorn's own handling
            super().handle_events()

    texts = [f"op {i} " + "z" * (i * 37 % 500) for i in range(40)]
    frames = [frame("text", t.encode()) for t in texts]
    frames.insert(20, frame("ping", b"hi"))
    stream = b"".join(frames)
    chunks = [stream[i : i + 777] for i in range(0, len(stream), 777)]
    got, others, written, closing = asyncio.run(serve(Watched, chunks, True))
    assert got == texts
    assert others == [] and not closing
    assert parsed == [Opcode.PING]
    assert written == Frame(Opcode.PONG, b"hi").serialize(mask=False)


def test_an_accepted_socket_keeps_no_handshake_and_waits_while_unwritable() -> None:
    """Once accepted, nothing keeps the handshake's request and response; its
    `writable` flag holds a send back while the transport is full, as uvicorn's Event
    did, and lets it go on resume."""

    async def run() -> tuple[bool, bool, bool, bytes]:
        go, sent = asyncio.Event(), asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await go.wait()
            await send({"type": "websocket.send", "text": "after resume"})
            sent.set()
            await receive()

        requests: list[weakref.ref[Any]] = []

        class Watched(DirectWebSocket):
            def handle_connect(self, event: Any) -> None:
                requests.append(weakref.ref(event))
                super().handle_connect(event)

        server, transport, _ = await opened(app, Watched)
        gc.collect()
        kept = requests[0]() is not None or hasattr(server, "response")
        transport.written.clear()
        server.pause_writing()
        go.set()
        for _ in range(5):
            await asyncio.sleep(0)
        held = not sent.is_set()
        server.resume_writing()
        await asyncio.wait_for(sent.wait(), 5)
        transport.close()
        for _ in range(5):
            await asyncio.sleep(0)
        return kept, held, sent.is_set(), bytes(transport.written)

    kept, held, sent, written = asyncio.run(run())
    assert not kept
    assert held and sent
    assert written == Frame(Opcode.TEXT, b"after resume").serialize(mask=False)
