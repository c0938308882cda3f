"""The relay socket's contract (docs/CONTRACT.md §4), on the embedded broker and on Redis, over real
sockets against the real app under uvicorn."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from infra.settings import Settings
from tests.support.keys import DeviceKey
from tests.support.relay import make_book, open_peer, payload
from tests.support.services import InProcessServer


async def test_op_reaches_peers_with_the_authenticated_sender(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a, b, c) = await make_book(client, settings, 3)
    other_book, (stranger,) = await make_book(client, settings, 1)
    pa = await open_peer(server.ws_url, book_id, a)
    pb = await open_peer(server.ws_url, book_id, b)
    pc = await open_peer(server.ws_url, book_id, c)
    ps = await open_peer(server.ws_url, other_book, stranger)
    assert pa.welcome["device_id"] == a.device_id  # type: ignore[attr-defined]
    assert pa.welcome["book_id"] == book_id  # type: ignore[attr-defined]
    assert pa.welcome["latest_seq"] == 0  # type: ignore[attr-defined]
    assert set(pc.welcome["online"]) == {a.device_id, b.device_id}  # type: ignore[attr-defined]
    for p in (pa, pb, pc, ps):
        assert (await p.recv_type("sync_complete"))["latest_seq"] == 0

    data = payload(100)
    await pa.op(data, id="op-1", device_id=stranger.device_id)  # a spoofed sender id
    ack = await pa.recv_type("ack")
    assert ack == {"type": "ack", "id": "op-1", "seq": 1, "relay_timestamp": ack["relay_timestamp"]}
    for p in (pb, pc):
        got = await p.recv_type("crdt_operation")
        assert got["payload"] == data  # forwarded exactly as sent
        assert got["device_id"] == a.device_id  # never what the client wrote
        assert got["seq"] == 1
        assert abs(got["relay_timestamp"] - time.time()) < 5
        assert set(got) == {"type", "seq", "payload", "timestamp", "device_id", "relay_timestamp"}
    await pa.nothing()  # the sender's own socket does not get its op back
    await ps.nothing()  # another book gets nothing
    for p in (pa, pb, pc, ps):
        await p.close()


async def test_subprotocol_auth_selects_relay_v1_and_never_echoes_the_token(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a,) = await make_book(client, settings, 1)
    token = a.token()
    peer = await open_peer(server.ws_url, book_id, a, subprotocols=["relay.v1", "bearer." + token])
    assert peer.ws.subprotocol == "relay.v1"
    assert token not in str(peer.ws.response.headers)
    await peer.close()


@pytest.mark.parametrize(
    "case", ["query_token", "bad_token", "two_bearers", "not_member", "wrong_book", "pending"]
)
async def test_refused_handshakes_close_with_the_reason(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings, case: str
) -> None:
    book_id, (a, _b) = await make_book(client, settings, 2)
    other_book, (stranger,) = await make_book(client, settings, 1)
    kw: dict[str, object] = {}
    device = a
    expected = (4401, "INVALID_TOKEN")
    if case == "query_token":
        kw = {"query": "token=" + a.token()}
    elif case == "bad_token":
        kw = {"token": DeviceKey().token(book_id)}
    elif case == "two_bearers":
        kw = {"subprotocols": ["relay.v1", "bearer." + a.token(), "bearer." + a.token()]}
    elif case == "not_member":
        device, expected = stranger, (4403, "FORBIDDEN")
        kw = {"token": stranger.token(book_id)}
    elif case == "wrong_book":
        kw, expected = {"token": a.token(other_book)}, (4403, "FORBIDDEN")
    elif case == "pending":
        newcomer = DeviceKey(book_id=book_id)
        await client.post(
            "/api/v1/devices", json={"public_key": newcomer.public_b64}, headers=newcomer.auth(None)
        )
        await server.infra.members.add_pending(
            newcomer.device_id, server.infra.hasher.book_ref(book_id), 100
        )
        device, expected = newcomer, (4403, "FORBIDDEN")
    peer = await open_peer(server.ws_url, book_id, device, welcome=False, **kw)  # type: ignore[arg-type]
    assert await peer.closed() == expected


async def test_foreign_origin_is_refused_before_the_upgrade(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a,) = await make_book(client, settings, 1)
    with pytest.raises(InvalidStatus) as info:
        await open_peer(server.ws_url, book_id, a, headers={"Origin": "https://evil.example"})
    assert info.value.response.status_code == 403


async def test_resume_gets_every_missed_op_in_order_then_live(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a, b) = await make_book(client, settings, 2)
    pa = await open_peer(server.ws_url, book_id, a)
    epoch = pa.welcome["epoch"]  # type: ignore[attr-defined]
    pb = await open_peer(server.ws_url, book_id, b)
    await pb.op(id="first")
    await pb.recv_type("ack")
    await pb.close()  # b goes offline at position 1
    sent = []
    for i in range(30):
        sent.append(payload(20))
        await pa.op(sent[-1], id=f"x{i}")
    for _ in range(30):
        await pa.recv_type("ack")
    pb = await open_peer(server.ws_url, book_id, b, since=1, epoch=epoch)
    got = []
    while True:
        m = await pb.recv_type("crdt_operation", "sync_complete", "sync_gap")
        assert m["type"] != "sync_gap"
        if m["type"] == "sync_complete":
            break
        got.append(m)
    assert [m["seq"] for m in got] == list(range(2, 32))
    assert [m["payload"] for m in got] == sent
    assert m["latest_seq"] == 31
    assert pb.frames == 1  # the welcome, the replay and sync_complete went out together
    await pa.op(id="live")
    assert (await pb.recv_type("crdt_operation"))["seq"] == 32
    # A sync message replays again, even what the socket already had.
    await pb.send(type="sync", since=30, epoch=epoch)
    assert [(await pb.recv_type("crdt_operation"))["seq"] for _ in range(2)] == [31, 32]
    assert (await pb.recv_type("sync_complete"))["latest_seq"] == 32
    # A wrong epoch is a gap: everything retained follows.
    await pb.send(type="sync", since=5, epoch="not-the-epoch")
    gap = await pb.recv_type("sync_gap")
    assert gap == {"type": "sync_gap", "epoch": epoch, "oldest_seq": 1, "resume_seq": 0}
    assert (await pb.recv_type("crdt_operation"))["seq"] == 1
    await pa.close()
    await pb.close()


async def test_retried_id_is_acked_once_and_relayed_once(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a, b) = await make_book(client, settings, 2)
    pa = await open_peer(server.ws_url, book_id, a)
    pb = await open_peer(server.ws_url, book_id, b)
    await pa.op(id="same")
    first = await pa.recv_type("ack")
    await pa.close()
    pa = await open_peer(server.ws_url, book_id, a)  # retried after a reconnect
    await pa.op(id="same")
    again = await pa.recv_type("ack")
    assert again["seq"] == first["seq"] == 1
    assert (await pb.recv_type("crdt_operation"))["seq"] == 1
    await pb.nothing()
    await pa.close()
    await pb.close()


async def test_refused_ops_get_errors_and_peers_are_unharmed(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a, b) = await make_book(client, settings, 2)
    pa = await open_peer(server.ws_url, book_id, a)
    pb = await open_peer(server.ws_url, book_id, b)
    limit = settings.max_op_bytes
    cases = [
        ({"payload": "not base64!", "timestamp": 1}, "VALIDATION_ERROR"),
        ({"payload": "QQ=", "timestamp": 1}, "VALIDATION_ERROR"),
        ({"payload": payload(), "timestamp": int(time.time()) + 3 * 86400}, "VALIDATION_ERROR"),
        ({"payload": payload(), "timestamp": "soon"}, "VALIDATION_ERROR"),
        ({"payload": payload(limit + 1), "timestamp": 1}, "PAYLOAD_TOO_LARGE"),
    ]
    for i, (fields, code) in enumerate(cases):
        await pa.send(type="crdt_operation", id=f"bad{i}", **fields)
        error = await pa.recv_type("error")
        assert (error["code"], error["id"]) == (code, f"bad{i}")
    await pa.send(type="no_such_type")
    assert (await pa.recv_type("error"))["code"] == "VALIDATION_ERROR"
    await pb.nothing()
    # Two ops in one frame (JSON lines) are two ops.
    lines = [
        f'{{"type":"crdt_operation","payload":"{payload()}","timestamp":1,"id":"l{i}"}}'
        for i in range(2)
    ]
    await pa.ws.send("\n".join(lines))
    assert [(await pb.recv_type("crdt_operation"))["seq"] for _ in range(2)] == [1, 2]
    await pa.send(type="ping", timestamp=123)
    assert (await pa.recv_type("pong"))["timestamp"] == 123
    await pa.close()
    await pb.close()


@pytest.mark.parametrize("frame", ["not json", "[1, 2]", b"\x00binary", "big"])
async def test_malformed_or_oversized_frames_close_only_that_socket(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings, frame: str | bytes
) -> None:
    book_id, (a, b, c) = await make_book(client, settings, 3)
    pa = await open_peer(server.ws_url, book_id, a)
    pb = await open_peer(server.ws_url, book_id, b)
    pc = await open_peer(server.ws_url, book_id, c)
    expected = 1008
    if frame == "big":
        frame, expected = "x" * (settings.max_op_bytes * 4 // 3 + 4096 + 10), 1009
    await pa.ws.send(frame)
    code, _ = await pa.closed()
    assert code == expected
    await pb.op()
    assert (await pc.recv_type("crdt_operation"))["seq"] == 1
    await pb.close()
    await pc.close()


async def test_third_socket_closes_the_oldest(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a,) = await make_book(client, settings, 1)
    first = await open_peer(server.ws_url, book_id, a)
    second = await open_peer(server.ws_url, book_id, a)
    third = await open_peer(server.ws_url, book_id, a)
    assert await first.closed() == (4409, "TOO_MANY_SOCKETS")
    await second.nothing(("error",))
    await second.close()
    await third.close()


async def test_presence_and_online_devices(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a, b) = await make_book(client, settings, 2)
    pa = await open_peer(server.ws_url, book_id, a)
    pb = await open_peer(server.ws_url, book_id, b)
    assert await pa.recv_type("presence") == {
        "type": "presence",
        "device_id": b.device_id,
        "status": "online",
    }
    listed = await client.get(f"/api/v1/books/{book_id}/devices", headers=a.auth())
    online = {d["device_id"]: d["online"] for d in listed.json()["data"]["devices"]}
    assert online == {a.device_id: True, b.device_id: True}
    await pb.close()
    assert (await pa.recv_type("presence"))["status"] == "offline"
    listed = await client.get(f"/api/v1/books/{book_id}/devices", headers=a.auth())
    online = {d["device_id"]: d["online"] for d in listed.json()["data"]["devices"]}
    assert online == {a.device_id: True, b.device_id: False}
    await pa.close()


async def test_revocation_closes_4403_and_erasure_4410(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a, b, c) = await make_book(client, settings, 3)
    pa = await open_peer(server.ws_url, book_id, a)
    pb = await open_peer(server.ws_url, book_id, b)
    pc = await open_peer(server.ws_url, book_id, c)
    gone = await client.delete(f"/api/v1/books/{book_id}/devices/{c.device_id}", headers=a.auth())
    assert gone.status_code == 204
    assert await pc.closed() == (4403, "FORBIDDEN")
    revoked = await pb.recv_type("presence")
    while revoked["status"] != "revoked":
        revoked = await pb.recv_type("presence")
    assert revoked["device_id"] == c.device_id
    erased = await client.delete(f"/api/v1/books/{book_id}", headers=a.auth())
    assert erased.status_code == 204
    assert await pa.closed() == (4410, "BOOK_ERASED")
    assert await pb.closed() == (4410, "BOOK_ERASED")


async def test_token_expiry_closes_4401_unless_refreshed(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a, b) = await make_book(client, settings, 2)
    now = time.time()
    pa = await open_peer(server.ws_url, book_id, a, token=a.token(exp=now + 2))
    pb = await open_peer(server.ws_url, book_id, b, token=b.token(exp=now + 2))
    await pb.send(type="auth", token=b.token(exp=now + 600))
    assert await pa.closed() == (4401, "INVALID_TOKEN")
    await asyncio.sleep(0.5)
    await pb.op()
    assert (await pb.recv_type("ack"))["seq"] == 1
    await pb.send(type="auth", token=a.token())  # another device's token
    assert await pb.closed() == (4401, "INVALID_TOKEN")


async def test_http_send_ops_and_sync_status(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    book_id, (a, b) = await make_book(client, settings, 2)
    pb = await open_peer(server.ws_url, book_id, b)
    data = payload(50)
    body = {"book_id": book_id, "payload": data, "timestamp": int(time.time()), "id": "h1"}
    sent = await client.post("/api/v1/relay/send", json=body, headers=a.auth())
    assert sent.status_code == 202, sent.text
    assert sent.json()["data"]["seq"] == 1
    again = await client.post("/api/v1/relay/send", json=body, headers=a.auth())
    assert again.json()["data"]["seq"] == 1
    got = await pb.recv_type("crdt_operation")
    assert (got["payload"], got["device_id"]) == (data, a.device_id)
    for _ in range(4):
        body = {"book_id": book_id, "payload": payload(), "timestamp": 1}
        assert (
            await client.post("/api/v1/relay/send", json=body, headers=a.auth())
        ).status_code == 202
    listed = await client.get(f"/api/v1/books/{book_id}/ops?limit=3", headers=b.auth())
    page = listed.json()["data"]
    assert [o["seq"] for o in page["ops"]] == [1, 2, 3]
    assert page["has_more"] is True and page["gap"] is None
    assert page["ops"][0]["payload"] == data
    epoch = page["epoch"]
    rest = await client.get(f"/api/v1/books/{book_id}/ops?since=3&epoch={epoch}", headers=b.auth())
    assert [o["seq"] for o in rest.json()["data"]["ops"]] == [4, 5]
    stale = await client.get(f"/api/v1/books/{book_id}/ops?since=3&epoch=old", headers=b.auth())
    assert stale.json()["data"]["gap"] == {"resume_seq": 0}
    bad = await client.get(f"/api/v1/books/{book_id}/ops?since=x", headers=b.auth())
    assert bad.status_code == 400
    big = {"book_id": book_id, "payload": payload(settings.max_op_bytes + 3), "timestamp": 1}
    too_big = await client.post("/api/v1/relay/send", json=big, headers=a.auth())
    assert too_big.status_code == 413
    _stranger_book, (s,) = await make_book(client, settings, 1)
    body = {"book_id": book_id, "payload": payload(), "timestamp": 1}
    assert (await client.post("/api/v1/relay/send", json=body, headers=s.auth())).status_code == 403
    status = (await client.get(f"/api/v1/books/{book_id}/sync_status", headers=a.auth())).json()
    data_ = status["data"]
    assert data_["latest_seq"] == 5 and data_["ops_total"] == 5 and data_["epoch"] == epoch
    assert data_["devices_total"] == 2 and data_["devices_online"] == 1
    assert data_["backlog"]["retained_ops"] == 5 and data_["snapshot"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data_["last_op_at"])
    await pb.close()


async def test_slow_reader_is_cut_with_1013_and_resumes_losing_nothing(
    backend: str, tmp_path: object, request: pytest.FixtureRequest
) -> None:
    from tests.conftest import make_settings, reset_production

    base = make_settings(backend, tmp_path, request, with_s3=False)  # type: ignore[arg-type]
    limits = {**base.rate_limits, "RATE_LIMIT_WS_OPS": None}
    s = make_settings(
        backend,
        tmp_path,
        request,
        max_op_bytes=8192,
        with_s3=False,
        rate_limits=limits,  # type: ignore[arg-type]
    )
    if backend == "production":
        await reset_production(s)
    async with InProcessServer(s) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        book_id, (a, b) = await make_book(http, s, 2)
        pa = await open_peer(srv.ws_url, book_id, a)
        epoch = pa.welcome["epoch"]  # type: ignore[attr-defined]
        slow = await open_peer(srv.ws_url, book_id, b)
        await slow.recv_type("sync_complete")
        acked = 0
        code = None
        for i in range(3000):
            await pa.op(payload(8000), id=f"s{i}")
            if i % 50 == 49:
                while acked < i + 1:
                    await pa.recv_type("ack")
                    acked += 1
                if (
                    slow.ws.close_code is not None
                    or srv.infra.live.books.get(srv.infra.hasher.book_ref(book_id), {}).__len__()
                    == 1
                ):
                    break
        while acked < i + 1:
            await pa.recv_type("ack")
            acked += 1
        code, _ = await slow.closed(timeout=30)
        assert code == 1013
        resumed = await open_peer(srv.ws_url, book_id, b, since=0, epoch=epoch)
        seqs = []
        while True:
            m = await resumed.recv_type("crdt_operation", "sync_complete", "sync_gap", timeout=20)
            assert m["type"] != "sync_gap"
            if m["type"] == "sync_complete":
                break
            seqs.append(m["seq"])
        assert seqs == list(range(1, acked + 1))
        await pa.close()
        await resumed.close()


async def test_the_relay_keeps_its_contract_under_plain_uvicorn_websockets(
    settings: Settings,
) -> None:
    """Without the direct path of `infra.serving` (another ASGI server, say), every
    message goes through ASGI `receive` and `send`: same answers, same order."""
    async with (
        InProcessServer(settings, uvicorn_options={"ws": "websockets-sansio"}) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        book_id, (a, b) = await make_book(client, settings, 2)
        pa = await open_peer(server.ws_url, book_id, a)
        pb = await open_peer(server.ws_url, book_id, b)
        for p in (pa, pb):
            await p.recv_type("sync_complete")
        sent = [payload(50 + i) for i in range(20)]
        for i, data in enumerate(sent):
            await pa.op(data, id=f"op-{i}")
        await pa.op(sent[3], id="op-3")  # a retry: acked with its first seq, not relayed
        acks = [await pa.recv_type("ack") for _ in range(21)]
        assert [x["seq"] for x in acks] == [*range(1, 21), 4]
        got = [await pb.recv_type("crdt_operation") for _ in sent]
        assert [g["payload"] for g in got] == sent
        assert [g["seq"] for g in got] == list(range(1, 21))
        await pb.nothing()
        for p in (pa, pb):
            await p.close()


async def test_metrics_count_open_relay_sockets_and_tasks(
    server: InProcessServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    async def gauge(name: str) -> float:
        text = (await client.get("/metrics")).text
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        assert found, name
        return float(found.group(1))

    book_id, (a, b) = await make_book(client, settings, 2)
    before = await gauge("homepocket_ws_connections")
    pa = await open_peer(server.ws_url, book_id, a)
    pb = await open_peer(server.ws_url, book_id, b)
    assert await gauge("homepocket_ws_connections") == before + 2
    assert await gauge("homepocket_asyncio_tasks") >= 2
    await pa.close()
    await pb.close()
    deadline = time.monotonic() + 5
    while await gauge("homepocket_ws_connections") != before:
        assert time.monotonic() < deadline, "the gauge did not come back down"
        await asyncio.sleep(0.05)


async def test_a_socket_the_broker_could_not_record_is_not_kept(
    server: InProcessServer,
    client: httpx.AsyncClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def gauge() -> float:
        text = (await client.get("/metrics")).text
        found = re.search(r"^homepocket_ws_connections (\S+)$", text, re.M)
        assert found
        return float(found.group(1))

    async def down(*args: object) -> list[str]:
        raise ConnectionError("broker down")

    book_id, (a,) = await make_book(client, settings, 1)
    before = await gauge()
    monkeypatch.setattr(server.infra.backlog.broker, "socket_opened", down)
    peer = await open_peer(server.ws_url, book_id, a, welcome=False)
    code, _ = await peer.closed()
    assert code == 1013
    monkeypatch.undo()
    assert await gauge() == before  # the hub holds no socket that is gone
