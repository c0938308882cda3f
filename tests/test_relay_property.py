"""No silent loss (docs/CONTRACT.md §4), as a property: over random sends, disconnects and resumes,
every acked op ends up with every member device, or that device was told sync_gap.
Runs on both backends; few, small examples to stay quick."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.settings import Settings
from tests.support.keys import DeviceKey
from tests.support.relay import Peer, make_book, open_peer
from tests.support.services import InProcessServer

ACTION = st.tuples(
    st.sampled_from(["send", "drop", "resume"]), st.integers(0, 2), st.integers(1, 4)
)


class Device:
    """A client's view: what it holds, what it was told is gone, where it stands."""

    def __init__(self, key: DeviceKey) -> None:
        self.key = key
        self.peer: Peer | None = None
        self.have: set[int] = set()
        self.told_gone_upto = 0  # every seq <= this was covered by a sync_gap
        self.epoch: str | None = None
        self.acks = 0
        self.synced = 0
        self.replaying = True
        self.last_live = 0

    def absorb(self, m: dict[str, Any]) -> None:
        kind = m["type"]
        if kind == "crdt_operation" and not self.replaying:
            # Live: each op once, in increasing seq, on one connection.
            assert m["seq"] > self.last_live, (m["seq"], self.last_live)
            self.last_live = m["seq"]
        if kind in ("crdt_operation", "ack"):
            self.have.add(m["seq"])
            self.acks += kind == "ack"
        elif kind == "sync_gap":
            self.told_gone_upto = max(self.told_gone_upto, m["resume_seq"])
            self.epoch = m["epoch"]
        elif kind == "welcome":
            self.epoch = m["epoch"]
        elif kind == "sync_complete":
            self.synced += 1
            self.replaying = False
            self.last_live = max(self.last_live, m["latest_seq"])
        elif kind == "error":
            raise AssertionError(f"unexpected error {m}")

    def position(self) -> int:
        n = 0
        while n + 1 in self.have or n + 1 <= self.told_gone_upto:
            n += 1
        return n

    async def until(self, done: Any) -> None:
        assert self.peer is not None
        while not done():
            self.absorb(await self.peer.recv(5))

    async def drain(self) -> None:
        assert self.peer is not None
        with contextlib.suppress(TimeoutError):
            while True:
                self.absorb(await self.peer.recv(0.05))


@pytest.fixture
async def relaxed(settings: Settings) -> AsyncIterator[tuple[InProcessServer, httpx.AsyncClient]]:
    """One server for all examples, rate limits off (examples reconnect and register a lot)."""
    off = dict.fromkeys(settings.rate_limits)
    s = Settings(**{**settings.__dict__, "rate_limits": off})
    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        yield srv, http


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(ACTION, min_size=1, max_size=14))
async def test_every_acked_op_is_delivered_or_a_gap_is_told(
    relaxed: tuple[InProcessServer, httpx.AsyncClient],
    settings: Settings,
    actions: list[tuple[str, int, int]],
) -> None:
    server, client = relaxed
    book_id, keys = await make_book(client, settings, 3)
    devices = [Device(k) for k in keys]

    async def connect(d: Device, wait: bool = True) -> None:
        since = d.position()
        d.peer = await open_peer(
            server.ws_url, book_id, d.key, since=since, epoch=d.epoch, welcome=False
        )
        d.replaying, d.last_live = True, 0
        wanted = d.synced + 1
        if wait:
            await d.until(lambda: d.synced >= wanted)

    for d in devices:
        await connect(d)
    sent = 0
    for kind, index, count in actions:
        d = devices[index]
        if kind == "send" and d.peer is not None:
            target = d.acks + count
            for _ in range(count):
                sent += 1
                await d.peer.op(id=f"op-{sent}")
            await d.until(lambda d=d, target=target: d.acks >= target)  # type: ignore[misc]
            new = set(range(sent - count + 1, sent + 1))
            for other in devices:  # live delivery to every other open socket
                if other is not d and other.peer is not None:
                    await other.until(lambda o=other, new=new: new <= o.have)  # type: ignore[misc]
        elif kind == "drop" and d.peer is not None:
            await d.drain()
            await d.peer.close()
            d.peer = None
        elif kind == "resume" and d.peer is None:
            await connect(d, wait=False)  # its replay may overlap the next sends
    for d in devices:  # everyone catches up: by resuming, or by a sync message
        if d.peer is None:
            await connect(d)
        else:
            await d.until(lambda d=d: not d.replaying)  # type: ignore[misc]
            wanted = d.synced + 1
            await d.peer.send(type="sync", since=d.position(), epoch=d.epoch)
            d.replaying = True
            await d.until(lambda d=d, wanted=wanted: d.synced >= wanted)  # type: ignore[misc]
    acked = set().union(*(d.have for d in devices))
    assert acked == set(range(1, sent + 1))  # every send was acked once, with unique seqs
    for d in devices:
        missing = {s for s in acked if s not in d.have and s > d.told_gone_upto}
        assert not missing, f"silently lost {sorted(missing)}"
        assert d.peer is not None
        await d.peer.close()
