"""The Redis broker (production): many instances act as one.

Seq, backlog and publish are one atomic step (relay.redis_scripts). Appends are
batched: those asked for in one turn of the event loop (any sockets, any books) go to
Redis as ONE transaction (the texts pushed, one script call, the texts published: two
messages per book, the script's header with the seqs, then the texts); batches go out
pipelined on one connection (relay.resp), each op answered through a callback in the
order asked. One subscriber connection per process, subscribed only to the books it
has sockets for. Socket records carry the instance id, and each instance keeps a
heartbeat key with a TTL, so a dead instance's sockets stop counting as online and its
peers are told `offline`.

Keys and channels hold `book_ref`, device ids and instance ids, never a raw book_id;
payloads are passed through as opaque strings and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from infra.periodic import every
from relay.broker import (
    IDEMPOTENCY_TTL_S,
    Appended,
    BacklogLimits,
    Clock,
    Done,
    Head,
    History,
    NewOp,
    Sink,
    id_key,
    new_epoch,
    op_line,
    op_tail,
    settle,
)
from relay.redis_scripts import (
    APPEND_BATCH,
    FORGET_SIZE,
    GRANT_REFUND,
    READ,
    SOCKETS,
    SWEEP_SIZES,
    TAKE_REFUND,
    TRIM_THROUGH,
)
from relay.redis_sub import Subscriber
from relay.resp import TIMEOUT_S, Arg, CommandConnection, ReplyError, pack

log = logging.getLogger("homepocket.relay")

BEAT_S = 2.0
ALIVE_TTL_S = 6  # an instance silent this long is dead
PREFIX = "hp:r:"
INSTANCES = PREFIX + "instances"
# Every book's retained bytes (a sorted set by meta key) and their sum: the bound on the
# whole backlog trims the biggest books first. The last two keys of every backlog script.
TOTALS = (PREFIX + "sizes", PREFIX + "total")
KEEP_EXTRA_S = 24 * 3600  # backlog keys outlive their newest op by max age + a day
# Set once the client ids an earlier version kept per device have moved to their books.
IDS_BY_BOOK = PREFIX + "ids-by-book"
# Bytes of ops this instance published and has not yet received back on its own
# subscription may reach this share of Redis's pub/sub output-buffer limit; above it,
# appends wait. Acks (and so reading from sockets) must not run ahead of what the
# subscriber drains, or Redis cuts the subscription and every socket resyncs.
BUS_SHARE = 4
BUS_BUDGET_DEFAULT = 8 * 1024 * 1024  # a quarter of Redis's default 32 MB
# One script call carries at most this many appends / bytes of op text: bounds Redis's
# time in one script, the size of one command and of one published message.
MAX_BATCH_OPS = 256
MAX_BATCH_BYTES = 1024 * 1024
# While this many batches await their reply, the next one keeps filling (it goes out
# when a reply comes, or full): bigger batches, far fewer script calls and messages.
BATCHES_IN_FLIGHT = 1
DAY_S = 86400
MULTI = pack(b"MULTI")
EXEC = pack(b"EXEC")

# An append waiting for its batch: book, op, its line after the seq, who to tell, and
# the bytes it holds of the bus budget (0: not counted).
_Entry = tuple[str, NewOp, str, Done, int]


@dataclass(frozen=True, slots=True)
class _Sent:
    """A batch on its way: who to answer, and the commands around its script."""

    entries: list[_Entry]
    where: list[int]  # each entry's place in the script's reply
    pushes: list[bytes]  # MULTI, then the RPUSH of each book's texts
    publishes: list[bytes]  # the PUBLISH of each book's texts
    script_args: tuple[Arg, ...]


def _k(book_ref: str, part: str) -> str:
    return f"{PREFIX}{book_ref}:{part}"


def channel(book_ref: str) -> str:
    return _k(book_ref, "c")


def ids_key(book_ref: str, day: int) -> str:
    """The book's client ids of one day (Unix day number): fields `id_key`."""
    return _k(book_ref, f"j:{day}")


class RedisBroker:
    def __init__(
        self,
        redis: Callable[[], Any],
        url: str,
        limits: BacklogLimits,
        clock: Clock,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.instance = secrets.token_hex(8)
        self._url = url
        self._redis_factory = redis
        self._limits = limits
        # What every script call passes after `now`: max ops, bytes, age, and how long a
        # book's keys outlive their last write.
        self._limit_args = (
            limits.max_ops,
            limits.max_bytes,
            limits.max_age_s,
            limits.max_age_s + KEEP_EXTRA_S,
        )
        self._clock = clock
        self._r: Any = None
        self._sink: Sink | None = None
        self._sub: Subscriber | None = None
        self._sha: dict[str, str] = {}
        # Each new connection loads the append script before anything else: no batch
        # meets a NOSCRIPT after a Redis restart.
        self._timeout_s = timeout_s
        self._cmd = CommandConnection(
            url, (pack(b"SCRIPT", b"LOAD", APPEND_BATCH),), timeout_s=timeout_s
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._origin_prefix = self.instance + "."  # our sockets' connection ids
        self._unreceived: dict[str, int] = {}  # book_ref -> bytes of our ops on the bus
        self._unreceived_total = 0
        self._budget = BUS_BUDGET_DEFAULT
        self._room = asyncio.Event()
        self._room.set()
        self._listening: set[str] = set()  # books whose channel we subscribe to
        self._headers: dict[str, bytes] = {}  # book -> the header awaiting its texts
        self._batch: list[_Entry] = []  # appends asked for in this loop turn
        self._batch_bytes = 0
        self._flush_soon = False
        self._in_flight = 0  # batches sent, not yet answered
        self._sweep_cursor = "0"
        self._mine: dict[str, dict[str, float]] = {}  # book -> our socket records, scores
        self._unrecorded: set[tuple[str, str]] = set()  # closed, record not yet removed
        self._last_beat: float | None = None  # monotonic time of the last beat that worked
        self._steady_since = 0.0  # start of the current unbroken run of beats

    # Lifecycle.
    async def start(self, sink: Sink) -> None:
        self._sink = sink
        self._r = self._redis_factory()
        await self._load()
        await self._move_device_ids()
        self._sub = Subscriber(self._url, self._on_message, self._on_lost, self._timeout_s)
        await self._sub.start()
        await self._beat()
        self._tasks.append(asyncio.ensure_future(self._beat_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._sub is not None:
            await self._sub.stop()
        self._flush()  # what is left fails at once: the connection is closing
        with contextlib.suppress(Exception):  # a clean goodbye: our sockets are gone
            await self._r.delete(PREFIX + "alive:" + self.instance)
            await self._reap(self.instance)
        await self._cmd.close()  # after the goodbye: it publishes who went offline
        self._sink = None

    async def ping(self) -> None:
        await self._r.ping()

    async def _load(self) -> None:
        for name, text in (
            ("append", APPEND_BATCH),
            ("read", READ),
            ("refund", TAKE_REFUND),
            ("grant", GRANT_REFUND),
            ("sockets", SOCKETS),
            ("trim", TRIM_THROUGH),
            ("forget", FORGET_SIZE),
            ("sweep", SWEEP_SIZES),
        ):
            self._sha[name] = await self._r.script_load(text)
        self._budget = await self._bus_budget()

    async def _move_device_ids(self) -> None:
        """An earlier version kept client ids in one hash per device and day
        (`{book_ref}:i:{device_id}:{day}`); they move to their book's hash of that day,
        so that a retry sent across the upgrade is still acked with its first seq. Once:
        a marker key ends the scan for good. Instances starting together may both move a
        hash: they write the same fields."""
        r = self._r
        if await r.exists(IDS_BY_BOOK):
            return
        async for key in r.scan_iter(match=PREFIX + "*:i:*", count=1000):
            parts = key.split(b":")
            if len(parts) != 6 or parts[3] != b"i" or not parts[5].isdigit():
                continue
            device, target = parts[4], ids_key(parts[2].decode(), int(parts[5]))
            async with r.pipeline(transaction=False) as pipe:
                pipe.hgetall(key).pttl(key).pttl(target)
                ids, ttl, target_ttl = await pipe.execute()
            if ids and ttl > 0:
                ttl = max(ttl, target_ttl)
                async with r.pipeline(transaction=True) as pipe:
                    pipe.hset(target, mapping={device + b" " + c: v for c, v in ids.items()})
                    pipe.pexpire(target, ttl)
                    pipe.delete(key)
                    await pipe.execute()
        await r.set(IDS_BY_BOOK, 1)

    async def _bus_budget(self) -> int:
        """A share of the smallest pub/sub output-buffer limit Redis enforces."""
        try:
            config = await self._r.config_get("client-output-buffer-limit")
        except Exception:  # CONFIG renamed or refused (managed Redis): assume the default
            return BUS_BUDGET_DEFAULT
        raw = next(iter(config.values()), "") if config else ""
        words = (raw.decode() if isinstance(raw, bytes) else str(raw)).split()
        if "pubsub" not in words:
            return BUS_BUDGET_DEFAULT
        at = words.index("pubsub")
        try:
            limits = [int(w) for w in words[at + 1 : at + 3] if int(w) > 0]
        except ValueError:
            return BUS_BUDGET_DEFAULT
        return min(limits) // BUS_SHARE if limits else BUS_BUDGET_DEFAULT

    # The bus, per book and batch: the script's header "h<first seq> <origin>..." ("-"
    # for a retry, not relayed), then the transaction's "t\n<text>\n<text>...", each
    # text an op's line after its seq. EXEC runs alone, so on each channel a header is
    # followed by its texts; texts without a header (their script failed) are dropped.
    def _on_message(self, chan: bytes, data: bytes) -> None:
        sink = self._sink
        if sink is None or not data:
            return
        book_ref = chan[len(PREFIX) : -2].decode()
        kind = data[:1]
        if kind == b"h":
            self._headers[book_ref] = data
        elif kind == b"t":
            header = self._headers.pop(book_ref, None)
            if header is not None:
                self._deliver(sink, book_ref, header, data)
        elif kind == b"c":
            sink.on_control(book_ref, orjson.loads(data[1:]))

    def _deliver(self, sink: Sink, book_ref: str, header: bytes, body: bytes) -> None:
        head = header[1:].decode().split(" ")
        seq = int(head[0])
        origins = head[1:]
        texts = body.decode().split("\n")
        del texts[0]  # the "t" mark: no copy of the body without it
        if "-" in origins:  # retries: their texts are not relayed
            kept = [(o, t) for o, t in zip(origins, texts, strict=True) if o != "-"]
            origins, texts = [o for o, _ in kept], [t for _, t in kept]
        if not origins:
            return
        if book_ref in self._unreceived:
            # Our sockets' ops are back: what they held of the bus budget is free.
            mine = self._origin_prefix
            size = 0
            for origin, text in zip(origins, texts, strict=True):
                if origin.startswith(mine):
                    size += len(text)
            if size:
                self._received(book_ref, size)
        lines = [op_line(at, text) for at, text in enumerate(texts, seq)]
        sink.on_ops(book_ref, seq, origins, lines)

    # Backpressure: our own ops in flight on the bus, per book (a book we stop listening
    # to, or a lost subscription, forgets its count: those ops will never come back).
    def _received(self, book_ref: str, size: int) -> None:
        held = self._unreceived.get(book_ref, 0)
        size = min(held, size)
        if size <= 0:
            return
        if held == size:
            del self._unreceived[book_ref]
        else:
            self._unreceived[book_ref] = held - size
        self._unreceived_total -= size
        if self._unreceived_total < self._budget // 2:
            self._room.set()

    def _forget(self, book_ref: str | None) -> None:
        if book_ref is None:
            self._unreceived.clear()
            self._unreceived_total = 0
            self._headers.clear()
        else:
            self._unreceived_total -= self._unreceived.pop(book_ref, 0)
            self._headers.pop(book_ref, None)
        if self._unreceived_total < self._budget // 2:
            self._room.set()

    def _on_lost(self) -> None:
        self._forget(None)
        if self._sink is not None:
            self._sink.on_bus_lost()

    async def publish(self, book_ref: str, control: dict[str, Any]) -> None:
        await self._cmd.call(b"PUBLISH", channel(book_ref), b"c" + orjson.dumps(control))

    async def listen(self, book_ref: str) -> None:
        assert self._sub is not None
        self._listening.add(book_ref)
        await self._cmd.call(b"SADD", PREFIX + "books:" + self.instance, book_ref)
        await self._sub.subscribe(channel(book_ref).encode())

    async def unlisten(self, book_ref: str) -> None:
        assert self._sub is not None
        self._listening.discard(book_ref)
        await self._sub.unsubscribe(channel(book_ref).encode())
        self._forget(book_ref)
        await self._cmd.call(b"SREM", PREFIX + "books:" + self.instance, book_ref)

    # Backlog.
    async def append(self, book_ref: str, op: NewOp) -> Appended:
        future: asyncio.Future[Appended | Exception] = asyncio.get_running_loop().create_future()
        await self.append_then(book_ref, op, partial(settle, future))
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    def queue_append(self, book_ref: str, op: NewOp, done: Done) -> bool:
        """Into this loop turn's batch, unless the bus is too far behind (False)."""
        tail = op_tail(op.payload, op.timestamp, op.device_id, op.now)
        held = self._held(book_ref, op, tail)
        if held and self._unreceived_total >= self._budget:
            return False
        if held:
            self._unreceived[book_ref] = self._unreceived.get(book_ref, 0) + held
            self._unreceived_total += held
        self._enqueue((book_ref, op, tail, done, held))
        return True

    async def append_then(self, book_ref: str, op: NewOp, done: Done) -> None:
        while not self.queue_append(book_ref, op, done):
            self._room.clear()
            await self._room.wait()

    def _held(self, book_ref: str, op: NewOp, tail: str) -> int:
        """What the op holds of the bus budget until it comes back to us: only our
        sockets' ops on a book we listen to come back to be counted."""
        if book_ref in self._listening and op.origin.startswith(self._origin_prefix):
            return len(tail)  # the payload is ASCII: characters are bytes
        return 0

    def _enqueue(self, entry: _Entry) -> None:
        batch = self._batch
        if batch and entry[1].now // DAY_S != batch[0][1].now // DAY_S:
            self._flush()  # a batch never spans two days (one pair of id keys per book)
        if not self._batch:
            if not self._flush_soon:
                self._flush_soon = True
                asyncio.get_running_loop().call_soon(self._flush_now)
        self._batch.append(entry)
        self._batch_bytes += len(entry[2])
        if len(self._batch) >= MAX_BATCH_OPS or self._batch_bytes >= MAX_BATCH_BYTES:
            self._flush()

    def _flush_now(self) -> None:
        self._flush_soon = False
        if self._in_flight < BATCHES_IN_FLIGHT:
            self._flush()

    def _flush(self) -> None:
        """Send the batch as one transaction (see redis_scripts.APPEND_BATCH): RPUSH of
        each book's texts, the script, one PUBLISH of each book's texts."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        self._batch_bytes = 0
        books: dict[str, list[int]] = {}  # book -> its entries' places in the batch
        for i, entry in enumerate(batch):
            group = books.get(entry[0])
            if group is None:
                books[entry[0]] = [i]
            else:
                group.append(i)
        day = batch[0][1].now // DAY_S
        keys: list[Arg] = []
        id_keys: list[Arg] = []
        args: list[Arg] = [
            max(entry[1].now for entry in batch),
            *self._limit_args,
            2 * IDEMPOTENCY_TTL_S,
            self._limits.max_total_bytes,
            len(books),
        ]
        pushes: list[bytes] = [MULTI]
        publishes: list[bytes] = []
        where = [0] * len(batch)  # each entry's place in the reply (book by book)
        answered = 0
        for book_ref, places in books.items():
            prefix = PREFIX + book_ref + ":"
            keys += (prefix + "m", prefix + "l", prefix + "t")
            args += (new_epoch(), prefix + "c", len(places))
            texts: list[str] = []
            id_keys += (ids_key(book_ref, day), ids_key(book_ref, day - 1))
            for place in places:
                _, op, tail, _, _ = batch[place]
                size = len(tail)
                cid = op.client_id
                field = id_key(op.device_id, cid) if cid is not None else ""
                args += (field, op.origin, f"{op.now}:{size}", size)
                texts.append(tail)
                where[place] = 2 * answered
                answered += 1
            if self._limits.max_ops > 0:
                pushes.append(pack(b"RPUSH", prefix + "l", *texts))
            publishes.append(pack(b"PUBLISH", prefix + "c", "\n".join(["t", *texts])))
        sent = _Sent(
            batch,
            where,
            pushes,
            publishes,
            (len(keys) + len(id_keys) + 2, *keys, *id_keys, *TOTALS, *args),
        )
        self._in_flight += 1
        self._send(sent, pack(b"EVALSHA", self._sha["append"], *sent.script_args), True)

    def _send(self, sent: _Sent, script: bytes, first_try: bool) -> None:
        command = b"".join((*sent.pushes, script, *sent.publishes, EXEC))
        replies = len(sent.pushes) + len(sent.publishes) + 2  # +OK, +QUEUED..., EXEC's
        self._cmd.send(command, partial(self._answer, sent, first_try), replies)

    def _answer(self, sent: _Sent, first_try: bool, reply: Any) -> None:
        """The transaction's reply: each op answered, in the order queued."""
        if isinstance(reply, list):
            reply = reply[len(sent.pushes) - 1]  # the script's, after the RPUSHes
            if first_try and isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                # Its script cache was flushed: the body loads it again. (The texts the
                # first try pushed are cut out by the script; see redis_scripts.)
                self._send(sent, pack(b"EVAL", APPEND_BATCH, *sent.script_args), False)
                return
        self._in_flight -= 1
        if self._in_flight < BATCHES_IN_FLIGHT:
            # What gathered meanwhile goes out first, so Redis works on it while these
            # answers are handed out. (A send never answers at once, so a socket's
            # answers still keep the order of its ops.)
            self._flush()
        failed = isinstance(reply, Exception)
        for (book_ref, op, _, done, held), at in zip(sent.entries, sent.where, strict=True):
            result: Appended | Exception
            if failed:
                result = reply
                unpublished = True  # most likely
            else:
                seq = reply[at]
                result = (
                    Appended(seq, op.now, False) if seq > 0 else Appended(-seq, reply[at + 1], True)
                )
                unpublished = seq < 0  # a retry: nothing published
            if held and unpublished:
                self._received(book_ref, held)  # never block on what will not come back
            try:
                done(result)
            except Exception:
                log.exception("relay append answer failed")

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One script call on the pipelined connection."""
        try:
            return await self._cmd.call(b"EVALSHA", self._sha[name], len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await self._load()  # Redis restarted: its script cache is empty
            return await self._cmd.call(b"EVALSHA", self._sha[name], len(keys), *keys, *args)

    async def head(self, book_ref: str, now: int) -> Head:
        return (await self._read(book_ref, 0, None, 0, now)).head

    async def history(self, book_ref: str, since: int, epoch: str | None, limit: int) -> History:
        return await self._read(book_ref, since, epoch, limit, int(self._clock()))

    async def _read(
        self, book_ref: str, since: int, epoch: str | None, limit: int, now: int
    ) -> History:
        keys = [_k(book_ref, "m"), _k(book_ref, "l"), _k(book_ref, "t"), *TOTALS]
        args = [new_epoch(), now, *self._limit_args, since, epoch or "", limit]
        result = await self._script("read", keys, args)
        ep, seq, oldest, size, gap, start, entries = result
        head = Head(ep.decode(), int(seq), int(oldest), int(size))
        lines = [
            raw.decode() if raw[:1] == b"{" else op_line(at, raw.decode())  # (see READ)
            for at, raw in enumerate(entries, start + 1)
        ]
        return History(head, int(start), bool(gap), lines)

    async def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        keys = [_k(book_ref, "m"), _k(book_ref, "l"), _k(book_ref, "t"), *TOTALS]
        await self._script("trim", keys, [new_epoch(), self._limit_args[3], epoch, seq])

    async def drop_book(self, book_ref: str) -> None:
        await self._script("forget", [_k(book_ref, "m"), *TOTALS], [])
        doomed = [_k(book_ref, p) for p in ("m", "l", "t", "s")]
        # `j:*` its client ids; `i:*` as an earlier version kept them (see _move_device_ids)
        async for key in self._r.scan_iter(match=_k(book_ref, "[ij]:*"), count=500):
            doomed.append(key)
        await self._r.delete(*doomed)

    # Sockets and presence. Each socket is recorded in its book's sorted set, and
    # remembered here too, so that an instance that finds its records gone (reaped by a
    # peer while Redis stalled or it was cut off, or lost with Redis's data) writes them
    # again on its next beat.
    async def _sockets(self, book_ref: str, *change: str) -> list[tuple[str, str]]:
        """(device_id, conn_id) of instances not reaped, oldest first, after `change`
        (an add or a remove; redis_scripts.SOCKETS), in one round trip. A live instance
        is never counted out because its heartbeat key lapsed during a stall of Redis
        itself; a dead instance's records are removed by whoever reaps it, never here."""
        args = list(change) if change else ["read"]
        members = await self._script("sockets", [_k(book_ref, "s"), INSTANCES], args)
        return [tuple(m.decode().split("|", 1)) for m in members]

    async def socket_opened(
        self, book_ref: str, device_id: str, conn_id: str, now: int
    ) -> list[str]:
        member = f"{device_id}|{conn_id}"
        score = time.time()
        self._mine.setdefault(book_ref, {})[member] = score
        opened = await self._sockets(book_ref, "add", member, repr(score))
        return [c for d, c in opened if d == device_id]

    async def socket_closed(self, book_ref: str, device_id: str, conn_id: str) -> bool:
        member = f"{device_id}|{conn_id}"
        mine = self._mine.get(book_ref)
        if mine is not None:
            mine.pop(member, None)
            if not mine:
                del self._mine[book_ref]
        try:
            left = await self._sockets(book_ref, "remove", member)
        except Exception:
            self._unrecorded.add((book_ref, member))  # the next beat removes it
            raise
        return any(d == device_id for d, _ in left)

    async def online(self, book_ref: str) -> set[str]:
        return {d for d, _ in await self._sockets(book_ref)}

    async def refund_connect(self, device_id: str, window_s: int) -> None:
        key = PREFIX + "refund:" + device_id
        await self._script("grant", [key], [window_s])

    async def take_refund(self, device_id: str) -> bool:
        key = PREFIX + "refund:" + device_id
        return bool(await self._script("refund", [key], []))

    # Liveness: our heartbeat, and the sockets of instances that died without goodbye.
    async def _beat(self) -> None:
        began = time.monotonic()
        now = time.time()
        pipe = self._r.pipeline(transaction=False)
        pipe.set(PREFIX + "alive:" + self.instance, b"1", ex=ALIVE_TTL_S, get=True)
        pipe.zadd(INSTANCES, {self.instance: now})
        pipe.zrangebyscore(INSTANCES, 0, now - ALIVE_TTL_S)
        pipe.exists(PREFIX + "books:" + self.instance)
        was_alive, _, dead, recorded = await pipe.execute()
        # Reaping needs an unbroken run of our own beats as long as the TTL: after a
        # stall of Redis (or of this process) every peer looks silent, yet none is dead.
        last, self._last_beat = self._last_beat, time.monotonic()
        if was_alive is None or last is None or began - last > BEAT_S + self._timeout_s:
            self._steady_since = began
        if self._mine and not recorded:
            await self._record_again()
        if self._unrecorded:
            await self._forget_closed()
        # A slice of the sizes set checked against the books (keys that expired).
        swept = await self._script("sweep", [*TOTALS], [self._sweep_cursor])
        self._sweep_cursor = swept.decode() if isinstance(swept, bytes) else str(swept)
        if time.monotonic() - self._steady_since < ALIVE_TTL_S:
            return
        for instance in dead:
            name = instance.decode()
            if name != self.instance:
                await self._reap(name)

    async def _record_again(self) -> None:
        """Our records were reaped or lost while our sockets stayed open: write them
        again, and tell each book's peers that those devices are online."""
        log.warning("relay socket records were missing; recording them again")
        await self._r.delete(PREFIX + "reap:" + self.instance)  # reapable again if it dies
        for book_ref, members in list(self._mine.items()):
            if not members:
                continue
            await self._r.zadd(_k(book_ref, "s"), dict(members))
            await self._r.sadd(PREFIX + "books:" + self.instance, book_ref)
            for device in sorted({m.split("|", 1)[0] for m in members}):
                line = orjson.dumps({"type": "presence", "device_id": device, "status": "online"})
                await self.publish(book_ref, {"k": "msg", "exclude": device, "line": line.decode()})
        for book_ref in list(self._listening):
            await self._r.sadd(PREFIX + "books:" + self.instance, book_ref)

    async def _forget_closed(self) -> None:
        """Records of sockets that closed while Redis did not answer: removed now, and
        their devices announced offline where no other socket of theirs is open."""
        for book_ref, member in list(self._unrecorded):
            await self._r.zrem(_k(book_ref, "s"), member)
            self._unrecorded.discard((book_ref, member))
            device = member.split("|", 1)[0]
            if all(d != device for d, _ in await self._sockets(book_ref)):
                line = orjson.dumps({"type": "presence", "device_id": device, "status": "offline"})
                await self.publish(book_ref, {"k": "msg", "exclude": device, "line": line.decode()})

    async def _beat_forever(self) -> None:
        await every(
            BEAT_S,
            self._beat,
            failed="relay heartbeat failed; retrying",
            log=log,
            start_now=False,
            trace=False,
        )

    async def _reap(self, instance: str) -> None:
        """Forget a dead instance's sockets, once, and tell peers who went offline."""
        claimed = await self._r.set(PREFIX + "reap:" + instance, b"1", nx=True, ex=60)
        if not claimed:
            return
        books_key = PREFIX + "books:" + instance
        for raw in await self._r.smembers(books_key):
            book_ref = raw.decode()
            key = _k(book_ref, "s")
            members = [m.decode() for m in await self._r.zrange(key, 0, -1)]
            theirs = [m for m in members if m.split("|", 1)[1].startswith(instance + ".")]
            if not theirs:
                continue
            await self._r.zrem(key, *theirs)
            still = {d for d, _ in await self._sockets(book_ref)}
            for device in {m.split("|", 1)[0] for m in theirs} - still:
                line = orjson.dumps({"type": "presence", "device_id": device, "status": "offline"})
                await self.publish(book_ref, {"k": "msg", "exclude": device, "line": line.decode()})
        await self._r.delete(books_key)
        await self._r.zrem(INSTANCES, instance)
