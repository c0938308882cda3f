"""The socket's schemas from docs/asyncapi.yaml, for checking what the server sends.

`check_server_message` validates one message against the schema of the server message
of its type; tests/support/relay.py calls it on every message a test peer receives, so
every relay test checks the document against the server's real output.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


@functools.cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC.read_text())
    return loaded


def _ref(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def messages_by_action(action: str) -> dict[str, str]:
    """Message type -> its payload schema's `$ref`, for operations of `action` (`send`:
    what the server sends; `receive`: what it takes)."""
    doc = document()
    out: dict[str, str] = {}
    for operation in doc["operations"].values():
        if operation["action"] != action:
            continue
        for pointer in operation["messages"]:
            channel_message = _ref(doc, pointer["$ref"])
            message = _ref(doc, channel_message["$ref"])
            out[message["name"]] = message["payload"]["$ref"]
    return out


@functools.cache
def _validator(schema_ref: str) -> Draft7Validator:
    # The whole document is the root resource, so `#/components/...` refs resolve.
    return Draft7Validator({**document(), "$ref": schema_ref})


def check_server_message(message: dict[str, Any]) -> None:
    kind = message.get("type")
    schemas = messages_by_action("send")
    if kind not in schemas:
        raise AssertionError(f"the server sent a message type docs/asyncapi.yaml lacks: {kind}")
    errors = sorted(_validator(schemas[kind]).iter_errors(message), key=str)
    if errors:
        raise AssertionError(
            f"{kind} does not match docs/asyncapi.yaml: "
            + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
        )
