"""Where a resuming device starts, on the in-process broker and on Redis: one table of
cases, each read through `GET ops` and through a real socket, which must agree.

Each case builds its book through the real endpoints: ops sent, a snapshot completed
(which trims the backlog), the book's epoch changed (its backlog dropped, as a Redis
restart or a new in-process store would), more ops; then a device resumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings, reset_production
from tests.storage.support import member, ops_page, send_ops, stored_snapshot
from tests.support.keys import DeviceKey
from tests.support.relay import open_peer
from tests.support.services import InProcessServer

FIRST, CURRENT = "first", "current"  # which epoch a `since` or a snapshot belongs to


@dataclass(frozen=True)
class Case:
    ops: int  # sent in the first epoch
    since: int
    epoch: str | None = CURRENT  # FIRST, CURRENT, None (not sent) or a wrong one
    max_ops: int = 10_000  # BACKLOG_MAX_OPS
    snapshot: int | None = None  # covers_seq of a snapshot completed after the ops
    later_ops: int = 0  # sent after the snapshot
    new_epoch_ops: int | None = None  # the epoch changes, then this many ops
    # What the device must get:
    resume: int | None = None  # resume_seq of the gap; None: no gap
    offered: str | None = None  # the epoch of the snapshot offered with the gap
    seqs: tuple[int, int] = (0, 0)  # the ops after its position: first..last (0, 0: none)


CASES = {
    "within reach": Case(10, since=4, seqs=(5, 10)),
    "from the start": Case(10, since=0, epoch=None, seqs=(1, 10)),
    "a book with no ops": Case(0, since=0, epoch=None),
    "no ops, since ahead": Case(0, since=3, resume=0),
    "wrong epoch": Case(10, since=4, epoch="not-this-one", resume=0, seqs=(1, 10)),
    "no epoch with since": Case(10, since=4, epoch=None, resume=0, seqs=(1, 10)),
    "since beyond latest": Case(10, since=12, resume=0, seqs=(1, 10)),
    "trimmed by the limits": Case(10, since=2, max_ops=6, resume=4, seqs=(5, 10)),
    "since=0 on a trimmed book": Case(10, since=0, epoch=None, max_ops=6, resume=4, seqs=(5, 10)),
    "pure relay": Case(5, since=2, max_ops=0, resume=5),
    "snapshot fills the gap": Case(
        10, since=3, snapshot=7, resume=7, offered=CURRENT, seqs=(8, 10)
    ),
    "since=0 gets the snapshot": Case(
        10, since=0, epoch=None, snapshot=7, resume=7, offered=CURRENT, seqs=(8, 10)
    ),
    "position after the snapshot": Case(10, since=8, snapshot=7, seqs=(9, 10)),
    "snapshot covers everything": Case(
        10, since=0, epoch=None, snapshot=10, resume=10, offered=CURRENT
    ),
    "snapshot meets the backlog": Case(
        10, since=1, max_ops=6, snapshot=4, resume=4, offered=CURRENT, seqs=(5, 10)
    ),
    "snapshot too old": Case(10, since=1, max_ops=3, snapshot=4, resume=7, seqs=(8, 10)),
    "trimmed past the snapshot later": Case(
        10, since=0, epoch=None, max_ops=6, snapshot=7, later_ops=4, resume=8, seqs=(9, 14)
    ),
    "wrong epoch with a snapshot": Case(
        10, since=9, epoch="not-this-one", snapshot=7, resume=7, offered=CURRENT, seqs=(8, 10)
    ),
    "since beyond latest with a snapshot": Case(
        10, since=15, snapshot=7, resume=7, offered=CURRENT, seqs=(8, 10)
    ),
    "new epoch, whole, earlier snapshot": Case(
        10, since=10, epoch=FIRST, snapshot=7, new_epoch_ops=3, resume=0, offered=FIRST, seqs=(1, 3)
    ),
    "new epoch, empty, earlier snapshot": Case(
        10, since=10, epoch=FIRST, snapshot=7, new_epoch_ops=0, resume=0, offered=FIRST
    ),
    "new epoch, trimmed, earlier snapshot": Case(
        10, since=10, epoch=FIRST, max_ops=3, snapshot=7, new_epoch_ops=5, resume=2, seqs=(3, 5)
    ),
    "new epoch, no snapshot": Case(
        10, since=10, epoch=FIRST, new_epoch_ops=2, resume=0, seqs=(1, 2)
    ),
}


async def build_book(
    srv: InProcessServer, client: httpx.AsyncClient, case: Case
) -> tuple[DeviceKey, dict[str, str], str | None]:
    """The case's book; the epochs by name, and the id of its snapshot."""
    device = await member(client)
    await send_ops(client, device, case.ops)
    epochs = {FIRST: (await ops_page(client, device))["epoch"]}
    snapshot_id = None
    if case.snapshot is not None:
        snapshot_id = await stored_snapshot(
            client, device, epochs[FIRST], case.snapshot, os.urandom(64)
        )
    await send_ops(client, device, case.later_ops)
    if case.new_epoch_ops is not None:
        book_ref = srv.infra.hasher.book_ref(device.book_id)
        await srv.infra.backlog.broker.drop_book(book_ref)  # history lost: a new epoch
        await send_ops(client, device, case.new_epoch_ops)
    epochs[CURRENT] = (await ops_page(client, device))["epoch"]
    assert (epochs[CURRENT] != epochs[FIRST]) == (case.new_epoch_ops is not None)
    return device, epochs, snapshot_id


def expected_gap(case: Case, epochs: dict[str, str], snapshot_id: str | None) -> Any:
    if case.resume is None:
        return None
    gap: dict[str, Any] = {"resume_seq": case.resume}
    if case.offered is not None:
        assert case.snapshot is not None
        gap["snapshot"] = {
            "snapshot_id": snapshot_id,
            "epoch": epochs[case.offered],
            "covers_seq": case.snapshot,
        }
    return gap


@pytest.mark.parametrize("name", list(CASES))
async def test_resume_table(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, name: str
) -> None:
    case = CASES[name]
    settings = make_settings(backend, tmp_path, request, backlog_max_ops=case.max_ops)
    if backend == "production":
        await reset_production(settings)
    async with (
        InProcessServer(settings) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=10) as client,
    ):
        device, epochs, snapshot_id = await build_book(srv, client, case)
        epoch = epochs.get(case.epoch or "", case.epoch)
        gap = expected_gap(case, epochs, snapshot_id)
        seqs = list(range(case.seqs[0], case.seqs[1] + 1)) if case.seqs[0] else []

        page = await ops_page(client, device, case.since, epoch)
        assert page["epoch"] == epochs[CURRENT]
        assert page["gap"] == gap
        assert [o["seq"] for o in page["ops"]] == seqs

        status = await client.get(
            f"/api/v1/books/{device.book_id}/sync_status", headers=device.auth()
        )
        backlog = status.json()["data"]["backlog"]
        assert backlog["oldest_seq"] == page["oldest_seq"]
        assert backlog["retained_ops"] == page["latest_seq"] - page["oldest_seq"] + 1
        assert (backlog["retained_bytes"] == 0) == (backlog["retained_ops"] == 0)

        peer = await open_peer(srv.ws_url, device.book_id, device, since=case.since, epoch=epoch)
        got = await peer.recv()
        if gap is not None:
            assert got == {
                "type": "sync_gap",
                "epoch": epochs[CURRENT],
                "oldest_seq": page["oldest_seq"],
                **gap,
            }
            got = await peer.recv()
        replayed = []
        while got["type"] == "crdt_operation":
            replayed.append(got["seq"])
            got = await peer.recv()
        assert replayed == seqs
        assert got == {"type": "sync_complete", "latest_seq": page["latest_seq"]}
        await peer.close()
