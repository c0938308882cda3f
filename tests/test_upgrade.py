"""The WebSocket upgrade from httptools' parse (infra/upgrade.py), over real sockets to
real uvicorn servers: it answers every handshake request with the status the
`websockets` library's own server gives it, and what it accepts reaches the app exactly
as uvicorn's own path delivers it, with the same 101. Unlike uvicorn's path, what the
library's parser refuses (too many or too long headers, a body) is answered and closed,
not left hanging."""

from __future__ import annotations

import base64
import contextlib
import http
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.http11 import MAX_LINE_LENGTH, Request
from websockets.server import ServerProtocol

from infra.serving import DirectWebSocket, HeaderTimeoutHttp
from tests.support.services import free_port, wait_port

SCOPE_KEYS = ("type", "http_version", "scheme", "root_path", "path", "raw_path")
SCOPE_KEYS += ("query_string", "headers", "subprotocols")
PLAIN = b"not an upgrade"
scopes: dict[tuple[int, bytes], dict[str, Any]] = {}


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Records what it was given, accepts (with `p1` if offered) and closes. A request
    that is no upgrade to uvicorn gets a plain 404."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": PLAIN})
        return
    await receive()
    test_id = dict(scope["headers"]).get(b"x-test-id", b"")
    seen = {key: scope[key] for key in SCOPE_KEYS}
    seen["hosts"] = (scope["client"][0], scope["server"][0])
    scopes[(scope["server"][1], test_id)] = seen
    subprotocol = "p1" if "p1" in scope["subprotocols"] else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    await send({"type": "websocket.close", "code": 1000})


@contextlib.contextmanager
def serving(**protocols: Any) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app,
        port=port,
        lifespan="off",
        log_config=None,
        server_header=False,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        **protocols,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port(port)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[int, int]]:
    with (
        serving(http=HeaderTimeoutHttp, ws=DirectWebSocket) as ours,
        serving(http="httptools", ws="websockets-sansio") as uvicorns,
    ):
        yield ours, uvicorns


def exchange(port: int, request: bytes, wait: float = 5) -> tuple[bytes, bool]:
    """The response head (or the whole answer to a refusal), and whether the server
    closed the connection after a refusal; no answer in `wait` seconds is b""."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return answer, False
            if not chunk:
                return answer, True
            answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0]
        if head.startswith(b"HTTP/1.1 101 "):
            return head, False
        if answer.split(b" ")[1] == b"404":  # the plain answer, whole in one read here
            return answer, False
        sock.settimeout(3)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return answer, False
        return answer, True


def library_status(request: bytes) -> tuple[int, str | None]:
    """What the `websockets` library's own server answers (400 where it would only
    close), and the accept key of its 101."""
    server = ServerProtocol()
    server.receive_data(request)
    events = server.events_received()
    if events and isinstance(events[0], Request):
        response = server.accept(events[0])
        return response.status_code, response.headers.get("Sec-WebSocket-Accept")
    written = b"".join(server.data_to_send())
    return (int(written.split(b" ")[1]) if written else 400), None


token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=12)
value = st.builds(
    lambda pad, raw, tail: (
        pad + bytes(b for b in raw if b == 9 or 32 <= b < 127 or b >= 128) + tail
    ),
    st.sampled_from([b"", b" ", b"\t"]),
    st.binary(max_size=40),
    st.sampled_from([b"", b" ", b"\t "]),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    test_id = os.urandom(8).hex().encode()
    method = draw(st.sampled_from([b"GET"] * 12 + [b"POST", b"PUT"]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 12 + [b"HTTP/1.0"]))
    query = draw(st.text("abcXYZ019=&%-_.~", max_size=30)).encode()
    path = draw(st.sampled_from([b"/ws", b"/a%20b/c", b"/ws/"])) + (b"?" + query if query else b"")
    key = base64.b64encode(os.urandom(16))
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"127.0.0.1"), (b"X-Test-Id", test_id)]
    headers += draw(
        st.sampled_from(
            [[(b"Upgrade", b"websocket")]] * 12
            + [[(b"Upgrade", b"WebSocket")], [(b"Upgrade", b"h2c")], []]
        )
    )
    headers += draw(
        st.sampled_from(
            [[(b"Connection", b"Upgrade")]] * 12
            + [[(b"Connection", b"keep-alive, Upgrade")], [(b"Connection", b"close")], []]
        )
    )
    headers += draw(
        st.sampled_from(
            [[(b"Sec-WebSocket-Key", key)]] * 12
            + [[(b"Sec-WebSocket-Key", b"short")], [], [(b"Sec-WebSocket-Key", key)] * 2]
        )
    )
    headers += draw(
        st.sampled_from(
            [[(b"Sec-WebSocket-Version", b"13")]] * 12 + [[(b"Sec-WebSocket-Version", b"8")], []]
        )
    )
    offered = draw(st.lists(st.sampled_from(["p1", "p2", "bearer.x"]), max_size=3))
    if offered:
        headers.append((b"Sec-WebSocket-Protocol", ", ".join(offered).encode()))
    headers += draw(st.lists(st.tuples(token.map(lambda t: b"x-" + t.encode()), value), max_size=6))
    headers += [
        (b"X-Fill-%d" % n, b"v")
        for n in range(draw(st.sampled_from([0] * 16 + [115, 123, 124, 140])))
    ]
    long = draw(st.sampled_from([None] * 16 + [-1, 0, 1, 2]))
    if long is not None:  # a header line around the library's limit
        size = MAX_LINE_LENGTH - len(b"X-Long: \r\n") + long
        headers.append((b"X-Long", b"v" * size))
    headers += draw(
        st.sampled_from(
            [[]] * 16 + [[(b"Content-Length", b"0")], [(b"Transfer-Encoding", b"chunked")]]
        )
    )
    head = method + b" " + path + b" " + version + b"\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n", test_id


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=requests())
def test_each_request_gets_the_librarys_answer_and_uvicorns_scope(
    ports: tuple[int, int], case: tuple[bytes, bytes]
) -> None:
    request, test_id = case
    ours, uvicorns = ports
    status, accept = library_status(request)
    answer, closed = exchange(ours, request)
    event("plain HTTP" if PLAIN in answer else f"library says {status}")
    if PLAIN in answer:  # not an upgrade to uvicorn's HTTP side: as before
        assert exchange(uvicorns, request)[0].split(b" ")[1] == b"404"
        return
    assert int(answer.split(b" ")[1]) == status, answer[:200]
    if status != 101:
        assert closed, "a refused upgrade is answered and closed"
        return
    assert b"\r\nSec-WebSocket-Accept: " + (accept or "").encode() + b"\r\n" in answer
    theirs, _ = exchange(uvicorns, request)
    assert undated(answer) == undated(theirs)
    deadline = time.monotonic() + 5
    while not ((ours, test_id) in scopes and (uvicorns, test_id) in scopes):
        assert time.monotonic() < deadline, "the app never saw the socket"
        time.sleep(0.005)
    assert scopes.pop((ours, test_id)) == scopes.pop((uvicorns, test_id))


def undated(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (
            [(b"X-F%d" % n, b"v") for n in range(200)],
            http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        ([(b"X-Long", b"v" * 9000)], http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
        ([(b"Transfer-Encoding", b"chunked")], http.HTTPStatus.BAD_REQUEST),
    ],
)
def test_what_the_librarys_parser_refuses_is_answered_and_closed(
    ports: tuple[int, int], extra: list[tuple[bytes, bytes]], status: http.HTTPStatus
) -> None:
    """uvicorn's own path left these connections open with no answer."""
    key = base64.b64encode(os.urandom(16))
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    request += b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
    request += b"".join(name + b": " + value + b"\r\n" for name, value in extra) + b"\r\n"
    answer, closed = exchange(ports[0], request)
    assert answer.startswith(b"HTTP/1.1 %d " % status.value)
    assert closed
    assert exchange(ports[1], request, wait=1) == (b"", False)
