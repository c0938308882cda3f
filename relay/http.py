"""The relay's HTTP endpoints: `POST /relay/send`, `GET /books/{book_id}/ops`,
`GET /books/{book_id}/sync_status` (docs/CONTRACT.md §3), checked in the contract's order
(413, 401, 429, 403, 400). A gap in `GET ops` is answered by relay.resume, as on the socket.

Thin adapters over the broker; never decode or log a payload.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra import openapi as doc
from infra.clock import rfc3339
from infra.context import Infra, count_call, enforce
from infra.envelope import ok
from infra.errors import ApiError
from infra.validate import BOOK_ID, parse_object, read_body, required_string
from relay import ops, resume
from relay.broker import Broker
from relay.hub import Hub
from relay.records import SyncRecords

OPS_DEFAULT_LIMIT = 100
OPS_MAX_LIMIT = 1000
_OP_FIELDS = ("seq", "payload", "timestamp", "device_id", "relay_timestamp")


def routes(infra: Infra, broker: Broker, hub: Hub, records: SyncRecords) -> list[Route]:
    s = infra.settings

    async def send(request: Request) -> Response:
        raw = await read_body(request, s.max_relay_send_bytes)
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        verdict = await count_call(
            infra, "RATE_LIMIT_RELAY_SEND", caller.device_id, fail_closed=False
        )
        enforce(verdict, "RATE_LIMIT_RELAY_SEND")
        body = parse_object(raw)
        # The book is named in the body, so it is read (400) before membership (403).
        book_id = required_string(body, "book_id", pattern=BOOK_ID, max_len=128)
        book_ref = infra.auth.require_member(caller, book_id)
        now = infra.now()
        op = ops.new_op(body, caller.device_id, "", s.max_op_bytes, now)
        done = await broker.append(book_ref, op)
        if not done.duplicate:
            records.count(book_ref, len(op.payload), now)

        return ok(request, {"seq": done.seq, "relay_timestamp": done.relay_timestamp}, 202)

    async def list_ops(request: Request) -> Response:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        book_ref = infra.auth.require_member(caller, request.path_params["book_id"])
        since = _query_int(request, "since") or 0
        limit = min(_query_int(request, "limit") or OPS_DEFAULT_LIMIT, OPS_MAX_LIMIT)
        if limit < 1:
            raise ApiError("VALIDATION_ERROR", "limit: must be at least 1", {"field": "limit"})
        epoch = request.query_params.get("epoch") or None
        if epoch is not None and len(epoch) > 64:
            raise ApiError("VALIDATION_ERROR", "epoch: too long", {"field": "epoch"})
        resumed = await resume.read(broker, infra.snapshots, book_ref, since, epoch, limit)
        history = resumed.history
        head = history.head
        listed = []
        for line in history.lines:
            op = orjson.loads(line)
            listed.append({k: op[k] for k in _OP_FIELDS})

        data: dict[str, Any] = {
            "epoch": head.epoch,
            "latest_seq": head.latest_seq,
            "oldest_seq": head.oldest_seq,
            "has_more": history.has_more,
            "gap": resumed.gap_fields(),
            "ops": listed,
        }
        return ok(request, data)

    async def sync_status(request: Request) -> Response:
        caller = await infra.auth.authenticate(request.headers.get("authorization"))
        book_ref = infra.auth.require_member(caller, request.path_params["book_id"])
        head = await broker.head(book_ref, infra.now())
        snap = await infra.snapshots.latest(book_ref, head.epoch)
        ops_total, last_op_at = await records.read(book_ref)
        members = {d.device_id for d in await infra.members.list_book(book_ref)}
        online = await hub.online_devices(book_ref) & members

        data = {
            "epoch": head.epoch,
            "latest_seq": head.latest_seq,
            "ops_total": ops_total,
            # `_at` times are RFC 3339 strings (contract §1), like created_at and last_active_at.
            "last_op_at": rfc3339(last_op_at) if last_op_at is not None else None,
            "devices_total": len(members),
            "devices_online": len(online),
            "backlog": {
                "oldest_seq": head.oldest_seq,
                "retained_ops": head.retained_ops,
                "retained_bytes": head.retained_bytes,
                "retention_seconds": s.backlog_max_age_s,
            },
            # The latest snapshot of this epoch: its covers_seq is comparable with the
            # seqs above (one of an earlier epoch is found through snapshots/latest).
            "snapshot": (
                {
                    "snapshot_id": snap.snapshot_id,
                    "covers_seq": snap.covers_seq,
                    "size_bytes": snap.size_bytes,
                }
                if snap is not None and snap.epoch == head.epoch
                else None
            ),
        }
        return ok(request, data)

    return [
        Route("/api/v1/relay/send", send, methods=["POST"]),
        Route("/api/v1/books/{book_id}/ops", list_ops, methods=["GET"]),
        Route("/api/v1/books/{book_id}/sync_status", sync_status, methods=["GET"]),
    ]


def _query_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError("VALIDATION_ERROR", f"{name}: must be a whole number", {"field": name})
    return int(raw)


OP = doc.obj(
    list(_OP_FIELDS),
    seq=doc.INTEGER,
    payload=doc.BASE64,
    timestamp=doc.INTEGER,
    device_id=doc.string(),
    relay_timestamp=doc.INTEGER,
)
GAP = doc.nullable(
    doc.obj(
        ["resume_seq"],
        resume_seq=doc.INTEGER,
        snapshot=doc.obj(
            ["snapshot_id", "epoch", "covers_seq"],
            snapshot_id=doc.string(),
            epoch=doc.string(),
            covers_seq=doc.INTEGER,
        ),
    )
)

OPENAPI: dict[str, dict[str, Any]] = {
    "/api/v1/relay/send": {
        "post": doc.op(
            "Relay one encrypted op over HTTP: sequenced, kept and fanned out like a socket op.",
            tag="relay",
            ok_status=202,
            body=doc.obj(
                ["book_id", "payload", "timestamp"],
                book_id=doc.string(pattern="^[A-Za-z0-9_-]{16,128}$"),
                payload=doc.BASE64,
                timestamp=doc.INTEGER,
                id=doc.string(maxLength=64),
            ),
            ok=doc.obj(["seq", "relay_timestamp"], seq=doc.INTEGER, relay_timestamp=doc.INTEGER),
            errors=("PAYLOAD_TOO_LARGE", "RATE_LIMIT_EXCEEDED"),
        )
    },
    "/api/v1/books/{book_id}/ops": {
        "get": doc.op(
            "Retained ops after `since`; `gap` set when part of that history is gone.",
            tag="relay",
            params=[
                doc.BOOK_ID_PARAM,
                doc.query("since", doc.INTEGER, "default 0 (from the start)"),
                doc.query("epoch", doc.string(), "required with since > 0"),
                doc.query("limit", doc.INTEGER, "default 100, max 1000"),
            ],
            ok=doc.obj(
                ["epoch", "latest_seq", "oldest_seq", "has_more", "gap", "ops"],
                epoch=doc.string(),
                latest_seq=doc.INTEGER,
                oldest_seq=doc.INTEGER,
                has_more=doc.BOOLEAN,
                gap=GAP,
                ops={"type": "array", "items": OP},
            ),
            errors=("VALIDATION_ERROR",),
        )
    },
    "/api/v1/books/{book_id}/sync_status": {
        "get": doc.op(
            "The book's sync counters (counts and times, never content).",
            tag="relay",
            params=[doc.BOOK_ID_PARAM],
            ok=doc.obj(
                [
                    "epoch",
                    "latest_seq",
                    "ops_total",
                    "last_op_at",
                    "devices_total",
                    "devices_online",
                    "backlog",
                    "snapshot",
                ],
                epoch=doc.string(),
                latest_seq=doc.INTEGER,
                ops_total=doc.INTEGER,
                last_op_at=doc.nullable(doc.string("date-time")),
                devices_total=doc.INTEGER,
                devices_online=doc.INTEGER,
                backlog=doc.obj(
                    ["oldest_seq", "retained_ops", "retained_bytes", "retention_seconds"],
                    oldest_seq=doc.INTEGER,
                    retained_ops=doc.INTEGER,
                    retained_bytes=doc.INTEGER,
                    retention_seconds=doc.INTEGER,
                ),
                snapshot=doc.nullable(
                    doc.obj(
                        ["snapshot_id", "covers_seq", "size_bytes"],
                        snapshot_id=doc.string(),
                        covers_seq=doc.INTEGER,
                        size_bytes=doc.INTEGER,
                    )
                ),
            ),
        )
    },
}
