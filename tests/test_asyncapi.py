"""docs/asyncapi.yaml describes the socket the server runs: a well-formed AsyncAPI 3
document whose schemas are valid JSON Schema and whose refs resolve, naming every
message type the server's code sends or handles. (That every message the server sends
matches its schema is checked on every message the relay tests receive:
tests/support/relay.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from tests.support.asyncapi import (
    _validator,
    check_server_message,
    document,
    messages_by_action,
)

ROOT = Path(__file__).resolve().parent.parent
SERVER_CODE = [
    p for d in ("relay", "pairing", "infra", "storage") for p in (ROOT / d).rglob("*.py")
]
# JSON-schema and ASGI values of a "type" key are not socket messages.
NOT_MESSAGES = {"object", "array", "string", "integer", "boolean", "number", "null"}
NOT_MESSAGES |= {"http", "websocket"}


def server_sent_types() -> set[str]:
    """Every `{"type": "<name>", ...}` the server's code builds, and the op prefix."""
    found: set[str] = set()
    for path in SERVER_CODE:
        text = path.read_text()
        found.update(re.findall(r"\{\s*\"type\":\s*\"([a-z_]+)\"", text))
        found.update(re.findall(r"'\{\"type\":\"([a-z_]+)\"", text))
    return found - NOT_MESSAGES


def server_handled_types() -> set[str]:
    """The client message types relay/socket.py dispatches on."""
    text = (ROOT / "relay" / "socket.py").read_text()
    return set(re.findall(r"kind == \"([a-z_]+)\"", text))


def test_the_document_is_asyncapi_3() -> None:
    doc = document()
    assert doc["asyncapi"].startswith("3.")
    assert set(doc["channels"]) == {"relay"}
    assert doc["channels"]["relay"]["address"] == "/ws/relay/{book_id}"


def test_every_ref_resolves_and_every_schema_is_valid() -> None:
    doc = document()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target: Any = doc
                for part in ref.removeprefix("#/").split("/"):
                    assert part in target, f"unresolved {ref}"
                    target = target[part]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for schema in doc["components"]["schemas"].values():
        Draft7Validator.check_schema(schema)  # raises, naming the problem


def test_every_message_type_the_server_sends_is_documented() -> None:
    sent = server_sent_types()
    assert {"welcome", "ack", "sync_gap", "sync_complete", "error"} <= sent  # the scan works
    assert sent <= set(messages_by_action("send")), sent - set(messages_by_action("send"))
    # ...and nothing is documented that the server never sends.
    assert set(messages_by_action("send")) <= sent


def test_every_message_type_the_server_handles_is_documented() -> None:
    handled = server_handled_types()
    received = set(messages_by_action("receive"))
    # A client's `pong` is accepted and ignored (an answer to nothing): not a message a
    # client needs to send.
    assert handled - {"pong"} == received


@pytest.mark.parametrize(
    "message",
    [
        {
            "type": "welcome",
            "device_id": "0" * 32,
            "book_id": "b" * 16,
            "epoch": "e",
            "latest_seq": 0,
            "online": [],
            "server_time": 1.5,
        },
        {"type": "ack", "id": "x", "seq": 0, "relay_timestamp": 1},
        {"type": "sync_gap", "epoch": "e", "oldest_seq": 1, "resume_seq": 0, "extra": 1},
        {"type": "presence", "device_id": "0" * 32, "status": "away"},
        {"type": "nonsense"},
    ],
)
def test_a_wrong_message_is_caught(message: dict[str, Any]) -> None:
    with pytest.raises(AssertionError):
        check_server_message(message)


def test_client_messages_validate() -> None:
    sent = messages_by_action("receive")
    op = {"type": "crdt_operation", "payload": "AAEC", "timestamp": 1, "id": "a"}
    assert not list(_validator(sent["crdt_operation"]).iter_errors(op))
    assert list(_validator(sent["crdt_operation"]).iter_errors({**op, "payload": "AAE"}))
    assert not list(
        _validator(sent["sync"]).iter_errors({"type": "sync", "since": 3, "epoch": "e"})
    )
