"""Wires the relay into the app: the broker chosen from settings, this instance's hub
(which becomes `infra.live`), the backlog port storage trims through (`infra.backlog`),
the socket route, the HTTP routes and the background loops. Never logs a payload or a
raw book_id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from starlette.routing import BaseRoute, WebSocketRoute

from infra.context import Capability, Infra
from infra.ports import BacklogHead
from relay import http
from relay.broker import Broker, open_broker
from relay.hub import ERASED, REVOKED, Hub
from relay.records import SyncRecords
from relay.socket import RelaySocket


class BrokerBacklog:
    """`infra.ports.Backlog` over the broker: a completed snapshot trims what it covers."""

    def __init__(self, broker: Broker, now: Callable[[], int]) -> None:
        self.broker = broker
        self._now = now

    async def head(self, book_ref: str) -> BacklogHead:
        head = await self.broker.head(book_ref, self._now())
        return BacklogHead(head.epoch, head.latest_seq)

    async def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        await self.broker.trim_through(book_ref, epoch, seq)


def build(infra: Infra) -> Capability:
    broker = open_broker(infra.settings, infra.redis, infra.clock.now)
    hub = Hub(broker)
    records = SyncRecords(lambda: infra.db)
    infra.live = hub
    infra.backlog = BrokerBacklog(broker, infra.now)

    async def device_revoked(book_ref: str, device_id: str) -> None:
        await hub.close_device(book_ref, device_id, *REVOKED)

    async def book_erased(book_ref: str) -> None:
        records.forget(book_ref)
        await broker.drop_book(book_ref)
        await hub.close_book(book_ref, *ERASED)

    infra.hooks.on_device_revoked.append(device_revoked)
    infra.hooks.on_book_erased.append(book_erased)

    async def start() -> None:
        await broker.start(hub)
        infra.spawn(records.flush_forever())

    async def stop() -> None:
        # uvicorn has already closed the sockets with 1012 by now; these are stragglers.
        hub.close_all(1012, "SERVER_RESTARTING")
        relay_socket.expiries.close()
        with contextlib.suppress(Exception):
            await records.flush()
        await broker.stop()

    routes: list[BaseRoute] = [*http.routes(infra, broker, hub, records)]
    relay_socket = RelaySocket(infra, hub, broker, records)
    socket = WebSocketRoute("/ws/relay/{book_id}", relay_socket)
    return Capability(
        "relay",
        routes,
        sockets=[socket],
        openapi_paths=http.OPENAPI,
        start=start,
        stop=stop,
        ready_checks={"relay": broker.ping},
    )
