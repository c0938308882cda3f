"""A real `homepocket-relay serve` on the embedded default, stopped in the middle of a
stream of ops by SIGTERM (a deploy) or SIGKILL (a crash), then started again on the
same data dir: every op it acked is still served at its seq under the same epoch, no
device is told `sync_gap`, and the sender's retries of unacked ops are each kept once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import httpx
import pytest
from starlette.datastructures import Secret
from websockets.exceptions import ConnectionClosed

from relay import durable
from tests.conftest import make_settings
from tests.support.keys import DeviceKey
from tests.support.relay import Peer, make_book, open_peer, payload
from tests.support.services import ID_HASH_KEY, ServerProcess, free_port

OPS = 400


async def drain(peer: Peer, into: list[dict[str, object]]) -> None:
    """Everything the server sends until the socket goes."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            into.append(await peer.recv(timeout=30))


async def book_of_two(
    http: httpx.AsyncClient, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, list[DeviceKey]]:
    """A book of two devices on a `serve` process started with ID_HASH_KEY."""
    settings = make_settings("embedded", tmp_path, request, id_hash_key=Secret(ID_HASH_KEY))
    return await make_book(http, settings, 2)


def position(ops: list[dict[str, object]]) -> int:
    """The highest seq N such that every seq up to N arrived."""
    seqs = {int(str(m["seq"])) for m in ops if m["type"] == "crdt_operation"}
    n = 0
    while n + 1 in seqs:
        n += 1
    return n


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_a_restart_mid_stream_keeps_every_acked_op_under_the_same_epoch(
    tmp_path: Path, request: pytest.FixtureRequest, sig: signal.Signals
) -> None:
    env = {
        "ID_HASH_KEY": ID_HASH_KEY,
        "RATE_LIMIT_WS_CONNECT": "off",
        "RATE_LIMIT_WS_OPS": "off",
        "LOG_LEVEL": "WARNING",
    }
    server = ServerProcess(env, tmp_path / "data", port=free_port()).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            book_id, (a, b) = await book_of_two(http, tmp_path, request)
            sender = await open_peer(server.ws_url, book_id, a)
            receiver = await open_peer(server.ws_url, book_id, b)
            epoch = sender.welcome["epoch"]  # type: ignore[attr-defined]
            sent = {f"op-{n}": payload(64) for n in range(OPS)}
            heard: list[dict[str, object]] = []
            got: list[dict[str, object]] = []
            reading = asyncio.gather(drain(sender, heard), drain(receiver, got))

            for n, (cid, data) in enumerate(sent.items()):
                with contextlib.suppress(ConnectionClosed):
                    await sender.op(data, id=cid)
                if n == OPS // 2:  # mid-stream: some ops acked, some in flight
                    while sum(m["type"] == "ack" for m in heard) < OPS // 8:
                        await asyncio.sleep(0.01)
                    await asyncio.to_thread(server.stop, sig)
                    break
                await asyncio.sleep(0.001)
            await asyncio.wait_for(reading, 30)
            acked = {str(m["id"]): int(str(m["seq"])) for m in heard if m["type"] == "ack"}
            assert len(acked) >= OPS // 8

            await asyncio.to_thread(server.start)
            # The receiver resumes from its position: no gap, the rest of the history.
            since = position(got)
            receiver = await open_peer(server.ws_url, book_id, b, since=since, epoch=epoch)
            assert receiver.welcome["epoch"] == epoch  # type: ignore[attr-defined]
            replayed: list[dict[str, object]] = []
            while (message := await receiver.recv(timeout=10))["type"] != "sync_complete":
                replayed.append(message)
            assert all(m["type"] != "sync_gap" for m in replayed)
            assert position(got + replayed) >= max(acked.values())

            # The sender retries everything it has no ack for: each kept exactly once.
            sender = await open_peer(server.ws_url, book_id, a, since=0)
            await sender.recv_type("sync_complete", timeout=10)
            retried = [cid for cid in sent if cid not in acked]
            for cid in retried:
                await sender.op(sent[cid], id=cid)
            for _ in retried:
                ack = await sender.recv_type("ack", "error", timeout=10)
                assert ack["type"] == "ack", ack
                acked[str(ack["id"])] = int(str(ack["seq"]))

            headers = {"Authorization": f"Bearer {a.token()}"}
            ops: list[dict[str, object]] = []
            while True:
                r = await http.get(
                    f"/api/v1/books/{book_id}/ops",
                    params={"since": len(ops), "epoch": epoch, "limit": 1000},
                    headers=headers,
                )
                body = r.json()["data"]
                assert body["epoch"] == epoch and body["gap"] is None
                ops += body["ops"]
                if not body["has_more"]:
                    break
            by_seq = {op["seq"]: op["payload"] for op in ops}
            assert [op["seq"] for op in ops] == list(range(1, len(ops) + 1))
            assert sorted(by_seq.values()) == sorted(sent.values())  # each op once
            assert all(by_seq[seq] == sent[cid] for cid, seq in acked.items())
            await sender.close()
            await receiver.close()
    finally:
        server.stop(signal.SIGKILL)


async def test_a_server_replaces_an_unreadable_backlog_and_a_second_one_is_refused(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / durable.FILE_NAME).write_bytes(b"not a database " * 512)
    env = {"ID_HASH_KEY": ID_HASH_KEY, "LOG_LEVEL": "WARNING"}
    first = ServerProcess(env, tmp_path / "data", port=free_port()).start()  # a new file
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            book_id, (a, b) = await book_of_two(http, tmp_path, request)
            sender = await open_peer(first.ws_url, book_id, a)
            await sender.op(payload(64), id="before")
            assert (await sender.recv_type("ack", timeout=10))["seq"] == 1

            second = ServerProcess(env, tmp_path / "data", port=free_port())
            with pytest.raises(RuntimeError, match="in use by another process"):
                await asyncio.to_thread(second.start)
            assert second.proc is not None and second.proc.returncode == 2
            said = second.log()
            assert "configuration error: DATA_DIR: " in said and "Traceback" not in said

            # The first goes on with the same history.
            await sender.op(payload(64), id="after")
            assert (await sender.recv_type("ack", timeout=10))["seq"] == 2
            receiver = await open_peer(first.ws_url, book_id, b, since=0)
            replayed: list[dict[str, object]] = []
            while (message := await receiver.recv(timeout=10))["type"] != "sync_complete":
                replayed.append(message)
            assert [m["seq"] for m in replayed if m["type"] == "crdt_operation"] == [1, 2]
            await sender.close()
            await receiver.close()
    finally:
        first.stop(signal.SIGKILL)
