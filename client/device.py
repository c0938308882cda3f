"""One phone: its identity, its book and book key, its ledger, its offline queue, and
the relay session that syncs them. The API an app (or the demo, or a test) drives.

Everything leaving this object is ciphertext or a public key; a payload that does not
open with the book key is counted and dropped, never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from client import crypto
from client.api import Api, RelayError
from client.identity import Identity, b64, unb64
from client.ledger import KIND_STATE_REQUEST, KIND_UPDATE, Ledger, decode_op, encode_op
from client.session import Backoff, RelaySession
from client.state import DeviceState, PendingOp, load, save

EventSink = Callable[[str, str, dict[str, Any]], None]
log = logging.getLogger("homepocket.client")

# When the server retains this many ops (or bytes) since the last snapshot, a device
# uploads a new one: the server then trims what it covers, and a device that joins, or
# comes back after the backlog moved on, loads it instead of asking a peer.
SNAPSHOT_AFTER_OPS = 1000
SNAPSHOT_AFTER_BYTES = 4 * 1024 * 1024
# How often (in ops received or acked) a device asks the server how much it retains.
SNAPSHOT_CHECK_EVERY_OPS = 250


class Device:
    """One phone. What an app calls:

    - `Device.open(directory, server_url, name)`: the device kept in `directory` (its key
      file and its state, book key included), made there on first use; or
      `Device(server_url, Identity.generate())` for one kept in memory only.
    - `await create_book()` (the first phone) or `await register()` then pairing
      (`client.pair`); `book_id`, `device_id`.
    - `add_entry(amount_cents, note, currency)` → entry id; `ledger.entries()` →
      `list[Entry]`; `await attach_photo(entry_id, data)` → photo_id;
      `await fetch_photo(photo_id)` → the photo's bytes.
    - `go_online()` (a relay session in the background: resume, outbox, backoff,
      re-auth), `await go_offline()`, `await close()`; `await sync_over_http()` without a
      socket.
    - `await wait_until(predicate, within_s)`, `await wait_synced(within_s)`.
    - `await upload_snapshot()`, `await load_snapshot()` where the server has snapshots.

    `on_event(name, kind, msg)` is called with every socket message and the session's
    own events (`reconnecting`, `stopped`). Everything else is internal.
    """

    def __init__(
        self,
        server_url: str,
        identity: Identity,
        name: str = "",
        directory: Path | None = None,
        *,
        token_lifetime_s: int = 600,
        backoff: Backoff | None = None,
        on_event: EventSink | None = None,
        snapshot_after_ops: int = SNAPSHOT_AFTER_OPS,
        snapshot_after_bytes: int = SNAPSHOT_AFTER_BYTES,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.identity = identity
        self.name = name or identity.device_id[:8]
        self.directory = directory
        self.token_lifetime_s = token_lifetime_s
        self.backoff = backoff
        self.on_event: EventSink = on_event or (lambda name, kind, msg: None)
        self.state: DeviceState = load(self._state_path) if directory else DeviceState()
        self.ledger = Ledger()
        if self.state.ledger_b64:
            self.ledger.apply(unb64(self.state.ledger_b64))
        self.api = Api(server_url, identity, self.state.book_id, token_lifetime_s=300)
        self.session: RelaySession | None = None
        self.owe_state = False  # a peer asked for our full state after its sync_gap
        self.undecryptable = 0  # payloads that did not open with our book key
        self.refused_ops: list[dict[str, Any]] = []
        self.snapshot_after_ops = snapshot_after_ops
        self.snapshot_after_bytes = snapshot_after_bytes
        self.snapshots_made = 0
        self._ops_since_check = 0
        self._epoch_changed = False  # the server's history restarted: upload our state
        self._snapshotting: asyncio.Task[dict[str, Any] | None] | None = None
        self._changed = asyncio.Event()

    @classmethod
    def open(cls, directory: Path, server_url: str, name: str = "", **kw: Any) -> Device:
        """The device kept in `directory` (key and state), made there on first use."""
        identity = Identity.load_or_create(directory / "device.key")
        return cls(server_url, identity, name, directory, **kw)

    # --- identity and book -------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def book_id(self) -> str | None:
        return self.state.book_id

    @property
    def book_key(self) -> bytes:
        if self.state.book_key_b64 is None:
            raise RuntimeError("this device has no book key yet")
        return unb64(self.state.book_key_b64)

    def require_book(self) -> str:
        if self.state.book_id is None:
            raise RuntimeError("this device is in no book yet")
        return self.state.book_id

    async def register(self) -> dict[str, Any]:
        """Register the key alone (a device that will join a book by pairing)."""
        return await self.api.register()

    async def create_book(self, book_id: str | None = None) -> str:
        """Make a book (≥ 96 random bits of id) and its key; this device is its first member."""
        book_id = book_id or str(uuid.uuid4())
        await self.api.register(book_id)
        self.join_book(book_id, crypto.new_book_key())
        return book_id

    def join_book(self, book_id: str, book_key: bytes) -> None:
        self.state.book_id = book_id
        self.state.book_key_b64 = b64(book_key)
        self.api.book_id = book_id
        self._save()

    # --- the ledger ----------------------------------------------------------------------

    def add_entry(self, amount_cents: int, note: str, currency: str = "EUR") -> str:
        """Record locally at once; the encrypted update waits in the outbox until acked."""
        entry_id, update = self.ledger.add_entry(amount_cents, note, self.device_id, currency)
        self._queue(KIND_UPDATE, update)
        return entry_id

    def queue_state(self, request: bool) -> None:
        """Internal: queue our whole state, as a state request (0x02) or an answer."""
        kind = KIND_STATE_REQUEST if request else KIND_UPDATE
        self._queue(kind, self.ledger.full_state())

    def _queue(self, kind: int, update: bytes) -> None:
        payload = crypto.seal(
            self.book_key, encode_op(kind, update), crypto.op_aad(self.require_book())
        )
        op_id = uuid.uuid4().hex
        self.state.outbox[op_id] = PendingOp(op_id, b64(payload), int(time.time()))
        self._save()
        if self.session is not None:
            self.session.wake()

    # --- what the session hands us ------------------------------------------------------

    def welcome(self, msg: dict[str, Any]) -> None:
        """Internal (the session): adopt the book's epoch while our position is 0, and
        note an epoch change (our whole state then goes up as a snapshot)."""
        position = self.state.position
        if position.epoch is not None and msg.get("epoch") != position.epoch:
            self._epoch_changed = True
        if position.seq == 0:
            position.epoch = str(msg.get("epoch"))

    def receive_op(self, msg: dict[str, Any]) -> None:
        """Internal (the session): open, apply and mark one relayed op."""
        seq = int(msg["seq"])
        try:
            plaintext = crypto.open_sealed(
                self.book_key, unb64(str(msg["payload"])), crypto.op_aad(self.require_book())
            )
            kind, update = decode_op(plaintext)
            self.ledger.apply(update)
        except (crypto.DecryptError, ValueError):
            # Not ours to read (wrong key, tampered, or garbage): never applied. The seq
            # still counts as received, or the position would stall on it forever.
            self.undecryptable += 1
        else:
            if kind == KIND_STATE_REQUEST and msg.get("device_id") != self.device_id:
                self.owe_state = True
                if self.session is not None:
                    self.session.wake()
        self.state.position.mark(seq)
        self._save()
        self._count_for_snapshot()

    def acked(self, op_id: str, seq: int) -> None:
        """Internal (the session): the op left the outbox for good."""
        self.state.outbox.pop(op_id, None)
        self.state.position.mark(seq)
        self._save()
        self._count_for_snapshot()

    def refused(self, msg: dict[str, Any]) -> None:
        """Internal (the session): an op the server will never take (too large,
        malformed): drop it, keep a note in `refused_ops`."""
        op_id = msg.get("id")
        if isinstance(op_id, str) and self.state.outbox.pop(op_id, None) is not None:
            self.refused_ops.append({"id": op_id, "code": msg.get("code")})
            self._save()

    async def handle_gap(self, msg: dict[str, Any]) -> bool:
        """Internal (the session). What we asked for is gone. True when a snapshot fills
        the hole; False when a full-state exchange with a peer must (contract §4)."""
        if self.state.position.epoch not in (None, msg["epoch"]):
            self._epoch_changed = True
        self.state.position.restart(str(msg["epoch"]), int(msg["resume_seq"]))
        self._save()
        if not msg.get("snapshot"):
            return False
        try:
            await self.load_snapshot()
        except (RelayError, crypto.DecryptError, ValueError):
            return False
        return True

    # --- without a socket ------------------------------------------------------------------

    async def sync_over_http(self) -> None:
        """One round without a socket (a phone's background refresh): push the outbox
        through `POST /relay/send` (same ids, so retries are still idempotent), then page
        through `GET ops` from our position, with the same gap rules as the socket."""
        if self.session is not None and self.session.running:
            raise RuntimeError("the socket is syncing this device; use one or the other")
        await self._push_over_http()
        asked_for_state = False
        while True:
            position = self.state.position
            epoch = position.epoch if position.seq > 0 else None
            page = await self.api.ops(since=position.seq, epoch=epoch)
            if position.seq == 0 and page.get("gap") is None:
                position.epoch = str(page["epoch"])
            gap = page.get("gap")
            if gap is not None:
                usable = await self.handle_gap({"epoch": page["epoch"], **gap})
                if not usable and not asked_for_state:
                    asked_for_state = True
                    self.queue_state(request=True)
            for op in page["ops"]:
                self.receive_op(op)
            if not page["has_more"]:
                break
        if self.owe_state or asked_for_state:
            if self.owe_state:
                self.owe_state = False
                self.queue_state(request=False)
            await self._push_over_http()

    async def _push_over_http(self) -> None:
        for pending in list(self.state.outbox.values()):
            try:
                sent = await self.api.send_op(
                    unb64(pending.payload_b64), pending.timestamp, pending.op_id
                )
            except RelayError as refused:
                if refused.code in ("VALIDATION_ERROR", "PAYLOAD_TOO_LARGE"):
                    self.refused({"id": pending.op_id, "code": refused.code})
                    continue
                raise  # rate limited, or the server is away: the op stays queued
            self.acked(pending.op_id, int(sent["seq"]))

    # --- snapshots ------------------------------------------------------------------------

    async def upload_snapshot(self) -> dict[str, Any]:
        """Seal the full state and hand it to the server; it trims the ops it covers."""
        book_id = self.require_book()
        state = self.ledger.full_state()
        position = self.state.position
        size = len(state) + crypto.OVERHEAD
        made = await self.api.snapshot_create(str(position.epoch), position.seq, size)
        blob = crypto.seal(self.book_key, state, crypto.snapshot_aad(book_id, made["snapshot_id"]))
        await self.api.put_blob(made["upload_url"], made["upload_headers"], blob)
        return dict(await self.api.snapshot_complete(made["snapshot_id"]))

    def synced(self) -> None:
        """Replay done (sync_complete): after an epoch change the server holds none of
        our history, so our full state goes up as a snapshot (the next device to join
        then needs no peer); else check whether the backlog calls for one."""
        if self._epoch_changed:
            self._epoch_changed = False
            self._snapshot_soon(force=True)
        else:
            self._snapshot_soon(force=False)

    def _count_for_snapshot(self) -> None:
        self._ops_since_check += 1
        if self._ops_since_check >= SNAPSHOT_CHECK_EVERY_OPS:
            self._snapshot_soon(force=False)

    def _snapshot_soon(self, force: bool) -> None:
        if self._snapshotting is not None and not self._snapshotting.done():
            return
        self._ops_since_check = 0
        self._snapshotting = asyncio.ensure_future(self.maybe_snapshot(force))

    async def maybe_snapshot(self, force: bool = False) -> dict[str, Any] | None:
        """Upload a snapshot when the server retains `snapshot_after_ops` ops or
        `snapshot_after_bytes` bytes (or when `force`d) and ours would cover more than
        the latest one does. Failures are logged and left for the next check."""
        try:
            status = await self.api.sync_status()
            position = self.state.position
            if status["epoch"] != position.epoch or not self.state.book_key_b64:
                return None
            backlog = status["backlog"]
            due = force or (
                backlog["retained_ops"] >= self.snapshot_after_ops
                or backlog["retained_bytes"] >= self.snapshot_after_bytes
            )
            latest = status.get("snapshot") or {}
            if not due or (latest and position.seq <= int(latest["covers_seq"])):
                return None
            made = await self.upload_snapshot()
        except (RelayError, httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            log.warning("snapshot not made", extra={"error_type": type(exc).__name__})
            return None
        self.snapshots_made += 1
        self._notify()
        return made

    async def load_snapshot(self) -> dict[str, Any]:
        latest = await self.api.snapshot_latest()
        blob = await self.api.get_blob(latest["download_url"])
        aad = crypto.snapshot_aad(self.require_book(), latest["snapshot_id"])
        self.ledger.apply(crypto.open_sealed(self.book_key, blob, aad))
        self._save()
        return latest

    # --- photos -----------------------------------------------------------------------------

    async def attach_photo(self, entry_id: str, photo: bytes) -> str:
        """Encrypt, upload straight to the blob store, complete, then record the photo_id
        in the ledger (which syncs like any edit). The server sees a size, nothing else."""
        book_id = self.require_book()
        ticket = await self.api.photo_upload(len(photo) + crypto.OVERHEAD)
        photo_id = str(ticket["photo_id"])
        blob = crypto.seal(self.book_key, photo, crypto.photo_aad(book_id, photo_id))
        await self.api.put_blob(ticket["upload_url"], dict(ticket["upload_headers"]), blob)
        await self.api.photo_complete(photo_id)
        self._queue(KIND_UPDATE, self.ledger.attach_photo(entry_id, photo_id))
        return photo_id

    async def fetch_photo(self, photo_id: str) -> bytes:
        """The photo's plaintext bytes: `GET /photos/{id}`, download, open (raises
        `RelayError` `PHOTO_NOT_FOUND`, or `crypto.DecryptError` if it does not open)."""
        info = await self.api.photo_get(photo_id)
        blob = await self.api.get_blob(info["download_url"])
        return crypto.open_sealed(
            self.book_key, blob, crypto.photo_aad(self.require_book(), photo_id)
        )

    # --- online / offline -------------------------------------------------------------------

    def go_online(self) -> RelaySession:
        """Start the relay session in the background (no-op when running); returns it.
        It resumes from the saved position and sends the outbox once live."""
        if self.session is None or not self.session.running:
            self.session = RelaySession(
                self,
                backoff=self.backoff,
                token_lifetime_s=self.token_lifetime_s,
                on_event=lambda kind, msg: self._event(kind, msg),
            )
            self.session.start()
        return self.session

    async def go_offline(self) -> None:
        """Close the socket and stop reconnecting (airplane mode); the outbox and the
        position are kept, and `go_online()` resumes from them."""
        if self.session is not None:
            await self.session.stop()
            self.session = None

    async def close(self) -> None:
        await self.go_offline()
        if self._snapshotting is not None:
            self._snapshotting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._snapshotting
        await self.api.aclose()

    def _event(self, kind: str, msg: dict[str, Any]) -> None:
        if kind == "welcome":
            self.welcome(msg)
        self.on_event(self.name, kind, msg)
        self._notify()

    # --- waiting (for apps' UIs, the demo and tests) ------------------------------------

    async def wait_until(self, predicate: Callable[[], bool], within_s: float = 10.0) -> None:
        """Return once `predicate()` is true, checked after every change of the device's
        state (an op, an ack, a socket event); `TimeoutError` after `within_s`."""
        async with asyncio.timeout(within_s):
            while not predicate():
                await self._changed.wait()

    async def wait_synced(self, within_s: float = 10.0) -> None:
        """Live on the socket, and every op of ours acked."""
        await self.wait_until(
            lambda: (
                self.session is not None and self.session.live.is_set() and not self.state.outbox
            ),
            within_s,
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _save(self) -> None:
        if self.directory is not None:
            self.state.ledger_b64 = b64(self.ledger.full_state())
            self.directory.mkdir(parents=True, exist_ok=True)
            save(self._state_path, self.state)
        self._notify()

    @property
    def _state_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "state.json"
