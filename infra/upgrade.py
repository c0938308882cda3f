"""The WebSocket upgrade from the request httptools has already parsed.

uvicorn hands an upgrade to its WebSocket protocol as bytes: it writes the parsed
request out again, and the `websockets` library parses it a second time, then builds
its 101 with a Date header that uvicorn deletes before sending. In a reconnect storm
that was a fifth of each handshake's CPU. Here the request is checked as the library's
parser checks it, the library's `process_request` still decides (method, version,
Connection, Upgrade, key, version header, extensions), and the 101 is written once.

What the library's parser refuses is refused here too, with its status: a request
line or a header line over MAX_LINE_LENGTH, more than MAX_NUM_HEADERS headers, a header
name that is not a token or a value with control characters, a path that is not ASCII,
a Transfer-Encoding, a body. Unlike uvicorn's path, where the library's refusal of
these was never written, the peer gets the answer and the connection is closed.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request

# RFC 9110 5.1 (token) and 5.5 (field value: visible ASCII, space, tab, obs-text).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_CRLF = len(b"\r\n")


class Refusal(Exception):
    def __init__(self, status: HTTPStatus, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def handshake_request(
    method: str, url: bytes, http_version: str, headers: list[tuple[bytes, bytes]]
) -> tuple[Request, list[tuple[bytes, bytes]]]:
    """The library's `Request` for an upgrade httptools parsed (names lowercased), and
    the headers as uvicorn's path gives them to the app; or `Refusal`."""
    if len(method) + len(url) + len(" HTTP/1.1 ") + _CRLF > MAX_LINE_LENGTH:
        raise Refusal(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    if len(headers) > MAX_NUM_HEADERS:
        raise Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
    parsed = Headers()
    kept = []
    for name, value in headers:
        if len(name) + len(value) + len(": ") + _CRLF > MAX_LINE_LENGTH:
            raise Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header line too long")
        if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise Refusal(HTTPStatus.BAD_REQUEST, "invalid header")
        value = value.strip(b" \t")
        kept.append((name, value))
        # Values are opaque bytes as ISO-8859-1, as the library reads them.
        parsed.set_insecure(name.decode("ascii"), value.decode("iso-8859-1"))
    if "Transfer-Encoding" in parsed or not set(parsed.get_all("Content-Length")) <= {"0"}:
        raise Refusal(HTTPStatus.BAD_REQUEST, "a request body")
    try:
        path = url.decode("ascii")
    except UnicodeDecodeError:
        raise Refusal(HTTPStatus.BAD_REQUEST, "path not ASCII") from None
    return Request(path, parsed, method, "HTTP/" + http_version), kept


def switching_protocols(
    accept: str,
    extensions: str | None,
    subprotocol: str | None,
    default_headers: list[tuple[bytes, bytes]],
) -> bytes:
    """The 101 as uvicorn sends it: the library's headers, then the server's (a Date)."""
    lines = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: ",
        accept.encode("ascii"),
        b"\r\n",
    ]
    if extensions is not None:
        lines += [b"Sec-WebSocket-Extensions: ", extensions.encode("ascii"), b"\r\n"]
    for name, value in default_headers:
        lines += [name, b": ", value, b"\r\n"]
    if subprotocol is not None:
        token = subprotocol.encode("ascii", "replace")  # "?" is no token character
        if not _TOKEN.fullmatch(token):
            raise ValueError("a subprotocol is a token")
        lines += [b"Sec-WebSocket-Protocol: ", token, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def refusal_response(refusal: Refusal, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = f"Failed to open a WebSocket connection: {refusal.why}.\n".encode()
    status = refusal.status
    lines = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii")]
    for name, value in default_headers:
        lines += [name, b": ", value, b"\r\n"]
    lines += [
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)
