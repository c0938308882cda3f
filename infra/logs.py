"""JSON-lines logs that leak nothing (docs/CONTRACT.md §7).

A filter on the root handler redacts every record, whoever logged it: fields with
sensitive names are dropped, and token-, key- and address-shaped text is masked in
the message. Our own code logs hashed ids and sizes only; the filter is the net
under that rule, not the rule itself.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

_HASH = re.compile(r"[0-9a-f]+")
# Third-party loggers that print statements, frames or requests with their contents at
# DEBUG (SQL parameters, WebSocket frames, signed S3 requests): never below INFO.
QUIET_LIBRARIES = (
    "aiosqlite",
    "asyncpg",
    "websockets",
    "botocore",
    "aiobotocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "httpcore",
    "httpx",
    "redis",
    "limits",
    "sentry_sdk",
)


def _blob(match: re.Match[str]) -> str:
    """Base64-looking runs (keys, payloads) are masked; lowercase hex runs are our own
    hashes (book_ref, ip_ref), which logs are meant to carry."""
    return match.group() if _HASH.fullmatch(match.group()) else "[blob]"


# Field names whose values never reach a log line.
SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "token",
        "jwt",
        "payload",
        "body",
        "book_id",
        "ip",
        "client_ip",
        "public_key",
        "peer_public_key",
        "short_code",
        "code_value",
        "cookie",
        "headers",
        "sec-websocket-protocol",
        "password",
        "secret",
        "id_hash_key",
        "dsn",
        "query_string",
    }
)
_PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # Raw paths name a book: put the template back (uvicorn's socket lines quote paths).
    (re.compile(r"/books/[^/\s\"'?]+"), "/books/{book_id}"),
    (re.compile(r"/ws/relay/[^/\s\"'?]+"), "/ws/relay/{book_id}"),
    (re.compile(r"\?[^\s\"']*"), "?[query]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"), "[token]"),
    (re.compile(r"(?i)bearer\s+\S+"), "Bearer [token]"),
    (re.compile(r"bearer\.[A-Za-z0-9._-]+"), "bearer.[token]"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), "[ip]"),
    (re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{0,4}\b"), "[ip]"),
    (re.compile(r"[0-9a-fA-F:]*::[0-9a-fA-F:]*"), "[ip]"),  # compressed IPv6
    (re.compile(r"[A-Za-z0-9+/]{40,}={0,2}"), _blob),
    # book_ids are UUIDs in the apps we know of; any UUID is masked, just in case.
    (re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"), "[uuid]"),
    (re.compile(r"(?i)(postgres(?:ql)?|rediss?)://[^\s]+"), r"\1://[url]"),
]
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "color_message",
}


def scrub_text(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_value(key: str, value: Any) -> Any:
    if key.lower() in SENSITIVE_KEYS:
        return "[redacted]"
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: scrub_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value("", v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Runs on every record the handler writes; no code path can bypass it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        record.msg = scrub_text(message)
        record.args = None
        for key in list(vars(record)):
            if key not in _STANDARD:
                setattr(record, key, scrub_value(key, getattr(record, key)))
        if record.exc_info and record.exc_info[1] is not None:
            # Keep the type and where; drop messages that may quote input.
            exc = record.exc_info[1]
            record.exc_text = f"{type(exc).__name__} (details withheld)"
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_text:
            line["error"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


def setup_logging(level: str = "INFO", stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # A library that brought its own handler would write past the root's filter.
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            for own in logger.handlers:
                if not any(isinstance(f, RedactingFilter) for f in own.filters):
                    own.addFilter(RedactingFilter())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))
    # uvicorn's access log prints raw paths (with book ids) and client addresses.
    logging.getLogger("uvicorn.access").disabled = True
    # Per-socket lines (infra/serving.py): uvicorn's at DEBUG only, the library's never.
    debug = logging.getLevelName(level) <= logging.DEBUG
    logging.getLogger("homepocket.websocket").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("homepocket.websocket.library").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return handler
