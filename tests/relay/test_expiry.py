"""`relay.expiry.Expiries`: every socket's token expiry on one timer. Each item expires
once, at its time; a disarmed one never does, a re-armed one only at its new time."""

from __future__ import annotations

import asyncio

from infra.clock import ManualClock
from relay.expiry import Expiries


class Item:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.expires_at = 0

    def expired(self) -> None:
        self.log.append(self.name)


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_each_expires_once_at_its_time_unless_disarmed_or_moved() -> None:
    clock = ManualClock(1000.0)
    expiries = Expiries(clock.now)
    log: list[str] = []
    a, b, c, d = (Item(name, log) for name in "abcd")
    expiries.arm(a, 1000)  # due now
    expiries.arm(b, 1000)
    expiries.arm(c, 1000)
    expiries.arm(d, 1000)
    expiries.disarm(b)  # the socket closed
    expiries.arm(c, 1005)  # a fresh token
    await turns()
    assert sorted(log) == ["a", "d"]
    assert (a.expires_at, b.expires_at, c.expires_at) == (0, 0, 1005)
    assert len(expiries) == 1
    clock.advance(10)
    expiries.arm(b, 1001)  # earlier than the armed timer: fires at once, c with it
    await turns()
    assert sorted(log) == ["a", "b", "c", "d"]
    assert len(expiries) == 0
    expiries.arm(a, 2000)
    expiries.close()
    clock.advance(2000)
    await turns()
    assert log.count("a") == 1


async def test_a_later_time_waits_for_the_clock() -> None:
    clock = ManualClock(1000.0)
    expiries = Expiries(clock.now)
    log: list[str] = []
    item = Item("x", log)
    expiries.arm(item, 1000)
    expiries.arm(item, 1001)  # re-armed before its time came
    await asyncio.sleep(0.05)
    assert log == []  # the timer fired for 1000, found nothing due, waits for 1001
    assert item.expires_at == 1001
    expiries.close()
