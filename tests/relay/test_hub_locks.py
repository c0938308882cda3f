"""The hub subscribes a book when its first socket arrives and unsubscribes it after
its last: one book's (un)subscribe must not hold up sockets of other books (in a
reconnect storm on Redis, thousands of books subscribe at once), and the per-book
locks last only while used."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relay.broker import BacklogLimits
from relay.embedded import EmbeddedBroker
from relay.hub import Conn, Hub


class SlowListen(EmbeddedBroker):
    """Book "a"'s subscription waits until released (a slow round trip)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, BacklogLimits(1000, 1 << 20, 3600, 1 << 30), time.time)
        self.release = asyncio.Event()
        self.listened: list[str] = []

    async def listen(self, book_ref: str) -> None:
        if book_ref == "a":
            await self.release.wait()
        self.listened.append(book_ref)
        await super().listen(book_ref)


async def nothing(message: object) -> None:
    return None


def conn(n: int, book_ref: str) -> Conn:
    return Conn(nothing, f"i.{n}", f"device-{n}", book_ref, 1 << 16, 1 << 18)


async def test_a_slow_book_does_not_hold_up_the_others(tmp_path: Path) -> None:
    broker = SlowListen(tmp_path)
    hub = Hub(broker)
    await broker.start(hub)
    try:
        slow = asyncio.ensure_future(hub.attach(conn(1, "a"), 0))
        second_of_a = asyncio.ensure_future(hub.attach(conn(2, "a"), 0))
        await asyncio.sleep(0)
        await asyncio.wait_for(
            asyncio.gather(*(hub.attach(conn(n, f"b{n}"), 0) for n in range(3, 50))), 5
        )
        assert not slow.done() and not second_of_a.done()
        assert sorted(hub.books) == sorted(f"b{n}" for n in range(3, 50))
        broker.release.set()
        await asyncio.wait_for(asyncio.gather(slow, second_of_a), 5)
        assert broker.listened.count("a") == 1  # the second socket found it subscribed
        assert set(hub.books["a"]) == {"i.1", "i.2"}
        for n in range(1, 50):
            await hub.detach(conn(n, "a" if n < 3 else f"b{n}"))
        assert hub.books == {}
        assert len(hub._locks) == 0  # nothing kept for books no socket uses
    finally:
        await broker.stop()
