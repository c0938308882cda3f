"""Token expiry of every relay socket on one timer: each socket closes with 4401 when
its token expires, unless a fresh `auth` moved the time. Never holds a token.

A timer per socket (its handle, libuv's timer, a bound method and its arguments) cost
about 600 bytes of each idle connection; here a socket costs its place in a set, and
sockets whose tokens expire in the same second share one.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Protocol


class Expiring(Protocol):
    expires_at: int  # Unix seconds; 0 when not armed

    def expired(self) -> None: ...


class Expiries:
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._due: dict[int, set[Expiring]] = {}  # second -> what expires then
        self._seconds: list[int] = []  # the keys of `_due`, a heap
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0

    def __len__(self) -> int:
        return sum(len(group) for group in self._due.values())

    def arm(self, item: Expiring, at: int) -> None:
        """`item.expired()` at `at` (replacing any earlier time)."""
        self.disarm(item)
        item.expires_at = at
        group = self._due.get(at)
        if group is None:
            group = self._due[at] = set()
            heapq.heappush(self._seconds, at)
        group.add(item)
        if self._timer is None or at < self._timer_at:
            self._schedule(at)

    def disarm(self, item: Expiring) -> None:
        at, item.expires_at = item.expires_at, 0
        group = self._due.get(at) if at else None
        if group is not None:
            group.discard(item)  # an emptied second is dropped when its time comes

    def _schedule(self, at: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        delay = max(0.0, at - self._now())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._now()
        seconds = self._seconds
        while seconds and seconds[0] <= now:
            for item in self._due.pop(heapq.heappop(seconds)):
                item.expires_at = 0
                item.expired()
        if seconds:
            self._schedule(seconds[0])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
