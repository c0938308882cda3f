"""The relay socket `WS /ws/relay/{book_id}`: a thin adapter between the wire and the hub.

Never decodes, changes or logs a payload; never echoes a token; never logs a book_id.

The wire protocol (docs/CONTRACT.md §4), for app developers and auditors
========================================================================

Handshake
  Auth: `Authorization: Bearer <jwt>`, or (browsers) the subprotocols
  `["relay.v1", "bearer.<jwt>"]` with exactly one `bearer.` entry; the server selects
  `relay.v1` and never echoes the token. A token in the query string is refused.
  An `Origin` header not in ALLOWED_ORIGINS: HTTP 403 before the upgrade.
  Otherwise the server accepts, then closes at once where the credentials fail:
    4401 INVALID_TOKEN   bad, expired or unknown token
    4429 RATE_LIMIT_EXCEEDED retry_after=N   RATE_LIMIT_WS_CONNECT (per device)
    4403 FORBIDDEN       not a member, pending, revoked, or a token for another book
  Query: `?since=N&epoch=E` to resume (optional; N a whole number).

Frames
  Text frames of JSON objects with a `type`; one message per frame or several
  separated by `\\n` (JSON lines). The server coalesces what it has queued for a socket
  into one frame. Clients ignore unknown types and fields.

Server -> client
  welcome          {device_id, book_id, epoch, latest_seq, online: [other device_ids],
                    server_time}                       always first
  crdt_operation   {seq, payload, timestamp, device_id, relay_timestamp}
                   device_id is the authenticated sender, never what it wrote
  ack              {id, seq, relay_timestamp}           to the sender (id null if none)
  sync_gap         {epoch, oldest_seq, resume_seq, snapshot?: {snapshot_id, epoch,
                   covers_seq}}                         what was asked for is gone; the
                   retained ops after resume_seq follow. `snapshot` names the snapshot
                   to load first (GET .../snapshots/latest) when one fills the hole.
  sync_complete    {latest_seq}                         replay done, live from here
  presence         {device_id, status: online|offline|joined|revoked}
  pairing_completed {pairing_id, peer_device_id, peer_public_key}
  pong             {timestamp}                          echoes a client ping
  error            {code, message, id}                  a refused message; the socket
                   stays open. Codes: VALIDATION_ERROR, PAYLOAD_TOO_LARGE,
                   RATE_LIMIT_EXCEEDED.

Client -> server
  crdt_operation   {payload: base64 <= MAX_OP_BYTES decoded, timestamp: Unix s, id?}
                   id (<= 64 chars) makes retries idempotent for 24 h: a retry is acked
                   with the first seq and not relayed again.
  sync             {since, epoch}    replay after `since` (even ops already had), then
                                     sync_complete
  auth             {token}           a fresh token for the same device and book;
                                     anything else closes with 4401
  ping             {timestamp}       answered with pong

Order
  welcome; then, with `since`, the retained ops after it (or sync_gap and the ops after
  the resume point), then sync_complete; without `since`, sync_complete at once. Live
  ops arriving meanwhile are held and sent after it, none twice. Then every op of the
  book goes to every socket but the one that sent it (a device's second socket gets
  it), once, in increasing seq.

Gap rules (`since`, `epoch`)
  since=0 needs no epoch. A gap: since > 0 with an epoch missing or not current,
  since > latest_seq, or ops after since no longer retained. resume_seq is then the
  latest snapshot's covers_seq when it was made in this epoch and covers_seq >=
  oldest_seq - 1 (no hole before the backlog), else oldest_seq - 1. A snapshot of an
  earlier epoch is offered with resume_seq 0 when this epoch's ops are all retained
  from seq 1 (load it, then replay the new epoch from its start); otherwise a gap
  without `snapshot` means a full-state exchange with a peer. See relay/resume.py.

Close codes after the handshake
  4401 token expired (send `auth` before it does)   4403 device revoked
  4409 a third socket of the device opened (the oldest closes)   4410 book erased
  1008 malformed frame (not JSON, not an object, binary)   1009 frame over
  4/3 x MAX_OP_BYTES + 4 KiB   1012 server restarting   1013 too slow a consumer,
  or the relay briefly unavailable (its broker failed as the session started)
  Do not reconnect after 4403 or 4410; else reconnect with jittered backoff
  (1 s ... 60 s) and resume with `since`/`epoch`. The server pings every
  HEARTBEAT_INTERVAL_S; a peer silent for HEARTBEAT_TIMEOUT_S is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any, NoReturn

import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from infra.context import Infra, count_call, record_refusal
from infra.errors import ApiError, Unavailable, invalid_token
from infra.metrics import RELAY_SYNC_GAPS
from infra.serving import DIRECT, frame_limit
from infra.validate import BOOK_ID
from relay import ops, resume
from relay.broker import Appended, Broker, Head, NewOp
from relay.budget import OpBudget
from relay.expiry import Expiries
from relay.hub import MALFORMED, TOKEN_EXPIRED, TOO_SLOW, Conn, Hub, dumps
from relay.records import SyncRecords

log = logging.getLogger("homepocket.relay")

SUBPROTOCOL = "relay.v1"
BEARER_PREFIX = "bearer."
QUERY_TOKEN_NAMES = ("token", "access_token", "jwt", "auth", "authorization", "bearer")
REPLAY_PAGE = 500
REFUNDED_CLOSES = (1012, 1013)
UNAVAILABLE = (1013, "SERVICE_UNAVAILABLE")  # RFC 6455 "try again later": refunded too


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class RelaySocket:
    """The ASGI app behind the route (raw send and receive on the per-message path)."""

    def __init__(self, infra: Infra, hub: Hub, broker: Broker, records: SyncRecords) -> None:
        self.infra = infra
        self.hub = hub
        self.broker = broker
        self.records = records
        self.max_op_bytes = infra.settings.max_op_bytes
        self.frame_limit = frame_limit(self.max_op_bytes)
        self.queue_limit = max(256 * 1024, 4 * self.frame_limit)
        self.expiries = Expiries(infra.clock.now)  # closes with 4401 when a token expires

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admitted = await self._handshake(scope, receive, send)
        if admitted is not None:
            # Answered: nothing reads the request again, but the frames that dispatched
            # here (and uvicorn's protocol) keep this dict for the socket's whole life.
            scope.clear()
            await self._session(receive, *admitted)

    async def _handshake(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[Conn, str, int, int | None, str | None] | None:
        """Accept (or refuse) the upgrade. Its own coroutine, so the request objects it
        needs are gone once the session starts: an idle socket holds only its Conn."""
        ws = WebSocket(scope, receive, send)
        origin = ws.headers.get("origin")
        if origin is not None and origin not in self.infra.settings.allowed_origins:
            await ws.close()  # before accept: HTTP 403
            return None
        offered = list(scope.get("subprotocols") or [])
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        try:
            try:
                device_id, book_ref, exp, since, epoch = await self._admit(ws, offered)
            except Refused:
                raise
            except Exception as exc:  # a backend refused or did not answer in time
                log.warning("relay handshake failed", extra={"error_type": type(exc).__name__})
                raise Refused(*UNAVAILABLE) from None
        except Refused as refused:
            await ws.accept(subprotocol)
            await ws.close(refused.code, refused.reason)
            return None
        await ws.accept(subprotocol)
        direct = scope["extensions"].get(DIRECT) if scope.get("extensions") else None
        conn = Conn(
            send, self.hub.new_conn_id(), device_id, book_ref, self.frame_limit, self.queue_limit
        )
        conn.wire = direct["socket"] if direct else None
        return conn, ws.path_params["book_id"], exp, since, epoch

    async def _admit(
        self, ws: WebSocket, offered: list[str]
    ) -> tuple[str, str, int, int | None, str | None]:
        infra = self.infra
        query = ws.query_params
        if any(name in query for name in QUERY_TOKEN_NAMES):
            await self._refuse(ws, invalid_token("invalid"), TOKEN_EXPIRED)
        authorization = ws.headers.get("authorization")
        bearers = [p for p in offered if p.startswith(BEARER_PREFIX)]
        if authorization is None and len(bearers) == 1:
            authorization = "Bearer " + bearers[0][len(BEARER_PREFIX) :]
        elif authorization is None or len(bearers) > 1:
            await self._refuse(ws, invalid_token("invalid"), TOKEN_EXPIRED)
        try:
            caller = await infra.auth.authenticate(authorization)
        except Unavailable:
            raise
        except ApiError as exc:
            await self._refuse(ws, exc, TOKEN_EXPIRED)
        if not await self._refunded(caller.device_id):
            verdict = await count_call(
                infra, "RATE_LIMIT_WS_CONNECT", caller.device_id, fail_closed=False, counts=False
            )
            if verdict is not None and not verdict.allowed:
                retry = verdict.error().details["retry_after"]
                raise Refused(4429, f"RATE_LIMIT_EXCEEDED retry_after={retry}")
        book_id = ws.path_params.get("book_id", "")
        try:
            book_ref = infra.auth.require_member(caller, book_id)
        except ApiError as exc:
            await self._refuse(ws, exc, (4403, "FORBIDDEN"))
        since_raw, epoch = query.get("since"), query.get("epoch")
        since: int | None = None
        if since_raw is not None:
            if not since_raw.isdigit() or len(since_raw) > 18:
                raise Refused(*MALFORMED)
            since = int(since_raw)
        if epoch is not None and len(epoch) > 64:
            raise Refused(*MALFORMED)
        return caller.device_id, book_ref, caller.claims.exp, since, epoch

    async def _refunded(self, device_id: str) -> bool:
        """A credit from a connect the server ended; none while the broker fails (the
        connect is then counted, and the session start reports the failure)."""
        try:
            return await self.broker.take_refund(device_id)
        except Exception as exc:
            log.warning("connect refund unreadable", extra={"error_type": type(exc).__name__})
            return False

    async def _refuse(self, ws: WebSocket, exc: ApiError, close: tuple[int, str]) -> NoReturn:
        """A handshake refused for its credentials: audited as the HTTP 401s and 403s
        are (hashed ids, throttled), then closed with the socket's code."""
        await record_refusal(self.infra, exc, ws)
        raise Refused(*close) from None

    async def _session(
        self,
        receive: Receive,
        conn: Conn,
        book_id: str,
        exp: int,
        since: int | None,
        epoch: str | None,
    ) -> None:
        infra = self.infra
        self.expiries.arm(conn, exp)
        attached = False
        try:
            try:
                await self.hub.attach(conn, infra.now())
                attached = True
                head = await self._welcome(conn, book_id)
                if since is None:  # nothing to replay: the welcome's head is current
                    self._complete(conn, head.latest_seq)
                else:
                    await self._replay(conn, since, epoch)
            except Exception as exc:  # the broker is down or hung: try again later
                log.warning("relay session not started", extra={"error_type": type(exc).__name__})
                conn.close(*UNAVAILABLE)
                return
            if conn.wire is not None:
                conn.wire.read_directly(partial(self._now, conn))
            await self._read_until_finished(receive, conn)
        finally:
            self.expiries.disarm(conn)
            # Refunded: our own closes, and uvicorn's 1012 at shutdown; never a code the
            # peer chose (a client closing with 1012 would reconnect without limit).
            shut_down = conn.wire is not None and conn.wire.shut_down
            end = conn.closed[0] if conn.closed else (1012 if shut_down else None)
            # The refund first: on SIGTERM every session ends at once, and the server
            # waits for them only so long (uvicorn's graceful timeout) before it exits.
            if end in REFUNDED_CLOSES:
                window = infra.limiter.item("RATE_LIMIT_WS_CONNECT")
                if window is not None:
                    with contextlib.suppress(Exception):
                        await self.broker.refund_connect(conn.device_id, int(window.get_expiry()))
            if attached:
                with contextlib.suppress(Exception):
                    await self.hub.detach(conn)
            await conn.stop()

    async def _read_until_finished(self, receive: Receive, conn: Conn) -> None:
        """Read in this task (no task of its own per socket) until the peer leaves or the
        connection finishes: closed or failed, `Conn.finish` cancels this read, and only
        that cancellation is absorbed here (a server stopping still cancels the session)."""
        task = asyncio.current_task()
        assert task is not None
        if conn.finished:
            return
        conn.reader = task
        try:
            await self._read(receive, conn)
            if conn.reader is None:  # finished meanwhile: take delivery of its cancel here
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            if conn.reader is not None or task.uncancel() > 0:
                raise
        except Exception as exc:
            log.warning("relay socket failed", extra={"error_type": type(exc).__name__})
        finally:
            conn.reader = None

    async def _welcome(self, conn: Conn, book_id: str) -> Head:
        now = self.infra.now()
        head = await self.broker.head(conn.book_ref, now)
        online = await self.broker.online(conn.book_ref)
        online.discard(conn.device_id)
        conn.push(
            dumps(
                {
                    "type": "welcome",
                    "device_id": conn.device_id,
                    "book_id": book_id,
                    "epoch": head.epoch,
                    "latest_seq": head.latest_seq,
                    "online": sorted(online),
                    "server_time": now,
                }
            )
        )
        conn.last_seq = 0
        return head

    async def _replay(self, conn: Conn, since: int, epoch: str | None) -> None:
        """Backlog after `since` (or the gap and what follows), then sync_complete."""
        conn.holding = True
        latest = 0
        snapshots = self.infra.snapshots
        while conn.closed is None and not conn.finished:
            resumed = await resume.read(
                self.broker, snapshots, conn.book_ref, since, epoch, REPLAY_PAGE
            )
            history = resumed.history
            head = history.head
            latest = head.latest_seq
            gap = resumed.gap_fields()
            if gap is not None:
                RELAY_SYNC_GAPS.inc()
                message = {"type": "sync_gap", "epoch": head.epoch, "oldest_seq": head.oldest_seq}
                conn.push(dumps({**message, **gap}))
            for line in history.lines:
                if conn.out_bytes + len(line) > conn.queue_limit:
                    await conn.drained(conn.queue_limit // 2)
                conn.push(line)
            conn.last_seq = max(conn.last_seq, history.last_seq)
            if not history.has_more or not history.lines:
                break
            conn.flush_soon()  # a long replay goes out page by page
            since, epoch = history.last_seq, head.epoch
        self._complete(conn, latest)

    @staticmethod
    def _complete(conn: Conn, latest_seq: int) -> None:
        """Replay done: sync_complete, then the live ops held meanwhile."""
        conn.push(dumps({"type": "sync_complete", "latest_seq": latest_seq}))
        conn.release()

    async def _read(self, receive: Receive, conn: Conn) -> None:
        """Handle the peer's frames until it leaves or the socket closes."""
        while conn.closed is None:
            conn.busy = False
            message = await receive()
            conn.busy = True  # ops parsed meanwhile wait their turn (see `_now`)
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None or len(text) > self.frame_limit:
                conn.close(*MALFORMED) if text is None else conn.close(1009, "PAYLOAD_TOO_LARGE")
                return
            if conn.budget is None:  # made on the first message: idle sockets need none
                conn.budget = OpBudget(self.infra.limiter, conn.device_id)
            # One message per frame is the common case: no split, no copy.
            for line in text.split("\n") if "\n" in text else (text,):
                if not line or line.isspace():
                    continue
                try:
                    msg = orjson.loads(line)
                except orjson.JSONDecodeError:
                    msg = None
                if not isinstance(msg, dict):
                    conn.close(*MALFORMED)
                    return
                await self._handle(msg, conn, conn.budget)
                if conn.closed is not None:
                    return

    async def _handle(self, msg: dict[str, Any], conn: Conn, budget: OpBudget) -> None:
        kind = msg.get("type")
        try:
            if kind == "crdt_operation":
                await self._op(msg, conn, budget)
            elif kind == "sync":
                since = msg.get("since", 0)
                epoch = msg.get("epoch")
                if isinstance(since, bool) or not isinstance(since, int) or since < 0:
                    raise ApiError("VALIDATION_ERROR", "since: must be a whole number")
                if epoch is not None and not isinstance(epoch, str):
                    raise ApiError("VALIDATION_ERROR", "epoch: must be a string")
                try:
                    await self._replay(conn, since, epoch)
                except Exception as exc:  # the broker failed: the client resumes later
                    log.warning("relay replay failed", extra={"error_type": type(exc).__name__})
                    conn.close(*UNAVAILABLE)
            elif kind == "auth":
                await self._reauth(msg, conn)
            elif kind == "ping":
                conn.push_control(dumps({"type": "pong", "timestamp": msg.get("timestamp")}))
            elif kind == "pong":
                return
            else:
                raise ApiError("VALIDATION_ERROR", "type: unknown message type", {"field": "type"})
        except ApiError as exc:
            error: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.message}
            error["id"] = ops.echo_id(msg)
            if conn.inflight:  # answers keep the order of the ops: earlier acks first
                await conn.all_appended()
            conn.push_control(dumps(error))

    async def _op(self, msg: dict[str, Any], conn: Conn, budget: OpBudget) -> None:
        op = ops.new_op(msg, conn.device_id, conn.conn_id, self.max_op_bytes, self.infra.now())
        refused = await budget.spend()
        if refused is not None:
            raise refused
        # Don't wait for the broker's round trip before reading the next op: appends of one
        # socket queue in order (so do their seqs and acks), at most MAX_INFLIGHT at once,
        # and are answered from the broker's callback (no task per op).
        await conn.reserve_append()
        try:
            await self.broker.append_then(conn.book_ref, op, partial(self._append, conn, op))
        except BaseException:
            conn.appended()
            raise

    def _append(self, conn: Conn, op: NewOp, result: Appended | Exception) -> None:
        """The broker's answer to one op: its ack, or an error when it was not kept."""
        conn.appended()
        if isinstance(result, Exception):  # the broker failed (down, out of memory)
            # Neither kept nor acked: the client's offline queue retries it.
            log.warning("relay broker unavailable", extra={"error_type": type(result).__name__})
            error = {
                "type": "error",
                "code": "SERVICE_UNAVAILABLE",
                "message": "The relay is briefly unavailable; retry.",
                "id": op.client_id,
            }
            conn.push_control(dumps(error))
            return
        if not result.duplicate:
            self.records.count(conn.book_ref, len(op.payload), op.now)
        ack = {
            "type": "ack",
            "id": op.client_id,
            "seq": result.seq,
            "relay_timestamp": result.relay_timestamp,
        }
        conn.push_control(dumps(ack))

    def _now(self, conn: Conn, data: bytes) -> bool:
        """Handle a frame as it is parsed, outside any task, when it is one op that needs
        no wait: no earlier message still being handled, budget in hand, room among the
        appends in flight, and a broker that takes it at once. Anything else (and any
        invalid op) is left untouched (False) for `_read`, which answers it in order.
        The common case at full load; it spares a queue and a task switch per op."""
        # The frame's bytes (orjson checks their UTF-8). No frame reaches here over the
        # frame limit: uvicorn's `ws_max_size` is that limit (infra.serving.uvicorn_config).
        if conn.busy or conn.closed is not None or b"\n" in data:
            return False
        budget = conn.budget
        if budget is None:
            return False
        try:
            msg = orjson.loads(data)
            if type(msg) is not dict or msg.get("type") != "crdt_operation":
                return False
            op = ops.new_op(msg, conn.device_id, conn.conn_id, self.max_op_bytes, self.infra.now())
        except (orjson.JSONDecodeError, ApiError):
            return False
        if not budget.spend_now():
            return False
        if not conn.try_reserve():
            budget.unspend()
            return False
        if not self.broker.queue_append(conn.book_ref, op, partial(self._append, conn, op)):
            conn.appended()
            budget.unspend()
            return False
        return True

    async def _reauth(self, msg: dict[str, Any], conn: Conn) -> None:
        token = msg.get("token")
        try:
            if not isinstance(token, str):
                raise ApiError("INVALID_TOKEN", "token missing")
            try:
                caller = await self.infra.auth.authenticate("Bearer " + token)
            except Unavailable as exc:  # the old token stays good; the client tries again
                conn.push_control(
                    dumps({"type": "error", "code": exc.code, "message": exc.message})
                )
                return
            book_id = caller.claims.book_id
            if caller.device_id != conn.device_id or not book_id or not BOOK_ID.fullmatch(book_id):
                raise ApiError("INVALID_TOKEN", "another device or book")
            if self.infra.auth.require_member(caller, book_id) != conn.book_ref:
                raise ApiError("INVALID_TOKEN", "another book")
        except ApiError:
            conn.close(*TOKEN_EXPIRED)
            return
        self.expiries.arm(conn, caller.claims.exp)


__all__ = ["TOO_SLOW", "RelaySocket"]
