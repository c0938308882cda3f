"""Pairing meets the relay (docs/CONTRACT.md §4 and §5), over real sockets, on the embedded
default and on Redis + PostgreSQL: the generating device hears of the verify on its socket, the
pending joiner's socket is refused until the confirm, and the book hears it joined."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from infra.clock import ManualClock
from tests.support.keys import DeviceKey
from tests.support.pairing import Api, starter
from tests.support.relay import Peer, open_peer
from tests.support.services import InProcessServer

FORBIDDEN = (4403, "FORBIDDEN")


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)


@pytest.fixture
def tuned(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> Any:
    return starter(backend, tmp_path, request)


async def socket(srv: InProcessServer, api: Api, device: DeviceKey, book_id: str) -> Peer:
    token = api.auth(device, book_id)["Authorization"].removeprefix("Bearer ")
    peer = await open_peer(srv.ws_url, book_id, device, token=token)
    await peer.recv_type("sync_complete")
    return peer


async def refused(srv: InProcessServer, api: Api, device: DeviceKey, book_id: str) -> Any:
    token = api.auth(device, book_id)["Authorization"].removeprefix("Bearer ")
    peer = await open_peer(srv.ws_url, book_id, device, token=token, welcome=False)
    return await peer.closed()


async def book_with_member(api: Api) -> tuple[DeviceKey, DeviceKey, str]:
    """G founds a book; M joins it through pairing (generate, verify, confirm)."""
    g, m = await api.founder(), await api.newcomer()
    generated = await api.generate(g)
    assert (await api.verify(m, generated["short_code"])).status_code == 200
    assert (await api.confirm(g, generated["pairing_id"], True)).status_code == 200
    assert g.book_id
    m.book_id = g.book_id
    return g, m, g.book_id


async def test_generator_hears_the_verify_and_the_joiner_waits_for_confirm(
    server: InProcessServer, api: Api
) -> None:
    g, m, book_id = await book_with_member(api)
    pg, pm = await socket(server, api, g, book_id), await socket(server, api, m, book_id)
    j = await api.newcomer()
    generated = await api.generate(g)
    pid = generated["pairing_id"]

    assert (await api.verify(j, generated["short_code"])).status_code == 200
    heard = await pg.recv_type("pairing_completed")
    assert heard == {
        "type": "pairing_completed",
        "pairing_id": pid,
        "peer_device_id": j.device_id,
        "peer_public_key": j.public_b64,
    }
    await pm.nothing(("pairing_completed",))  # for the generating device alone

    # Pending: the joiner's socket is refused, and nobody hears of it.
    assert await refused(server, api, j, book_id) == FORBIDDEN
    await pm.nothing(("presence",))

    assert (await api.confirm(g, pid, True)).status_code == 200
    for peer in (pg, pm):
        assert await peer.recv_type("presence") == {
            "type": "presence",
            "device_id": j.device_id,
            "status": "joined",
        }
    j.book_id = book_id
    pj = await socket(server, api, j, book_id)
    assert set(pj.welcome["online"]) == {g.device_id, m.device_id}  # type: ignore[attr-defined]
    for peer in (pg, pm):
        online = await peer.recv_type("presence")
        assert (online["device_id"], online["status"]) == (j.device_id, "online")
    # The new member is a full peer of the relay.
    await pj.op("AAAA", id="first")
    assert (await pj.recv_type("ack"))["seq"] == 1
    for peer in (pg, pm):
        assert (await peer.recv_type("crdt_operation"))["device_id"] == j.device_id
    for peer in (pg, pm, pj):
        await peer.close()


async def test_rejected_joiner_stays_refused(server: InProcessServer, api: Api) -> None:
    g, m, book_id = await book_with_member(api)
    pm = await socket(server, api, m, book_id)
    j = await api.newcomer()
    generated = await api.generate(g)
    assert (await api.verify(j, generated["short_code"])).status_code == 200
    assert await refused(server, api, j, book_id) == FORBIDDEN
    rejected = await api.confirm(g, generated["pairing_id"], False)
    assert rejected.json()["data"] == {"status": "rejected"}
    assert await refused(server, api, j, book_id) == FORBIDDEN
    await pm.nothing(("presence",))  # no `joined` for a rejected joiner
    await pm.close()


async def test_joiner_of_an_expired_session_stays_refused(tuned: Any) -> None:
    clock = ManualClock(time.time())
    async with tuned(clock=clock) as (srv, api):
        g, m, book_id = await book_with_member(api)
        pm = await socket(srv, api, m, book_id)
        j = await api.newcomer()
        generated = await api.generate(g)
        assert (await api.verify(j, generated["short_code"])).status_code == 200
        assert await refused(srv, api, j, book_id) == FORBIDDEN
        clock.advance(601)  # the 10-minute session ends unconfirmed
        deadline = time.monotonic() + 5
        while (await srv.infra.members.get(j.device_id)).book_ref is not None:
            assert time.monotonic() < deadline, "the sweeper did not remove the joiner"
            await asyncio.sleep(0.1)
        assert await refused(srv, api, j, book_id) == FORBIDDEN
        late = await api.confirm(g, generated["pairing_id"], True)
        assert late.status_code == 404
        assert await refused(srv, api, j, book_id) == FORBIDDEN
        await pm.nothing(("presence",))
        await pm.close()
