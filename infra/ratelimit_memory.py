"""The rate limiter's counters in process memory (no REDIS_URL): `limits`' moving
window, kept so that its cost does not grow with the number of devices.

`limits`' own async memory store expires events by walking every key with a thread
hop per key, again and again while calls come in: with 10,000 devices known it held
the event loop for seconds in a reconnect storm (the accept queue overflowed and
handshakes stalled). Here a key's events are expired when the key is used, and a key
unused for a whole window is dropped from the front of its window's queue, oldest
first, a few at each call: O(1) per call, nothing on a timer.

A key's events are (time, count) pairs: a block of ops (relay/budget.py) is one pair.
The window is exact, as `limits`' is: a call is allowed when the events of the last
`expiry` seconds plus its own stay within the limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from limits.aio.storage.base import MovingWindowSupport, Storage

DROP_PER_CALL = 4  # idle keys dropped per call, at most: the sweep keeps up, never stalls


class _Events:
    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def expire(self, cutoff: float) -> None:
        """Forget what happened at or before `cutoff` (outside the window)."""
        entries = self.entries
        while entries and entries[0][0] <= cutoff:
            self.total -= entries.popleft()[1]


class MemoryWindows(Storage, MovingWindowSupport):
    """`limits` storage for `MovingWindowRateLimiter` only (the one strategy the server
    uses): the fixed-window calls raise NotImplementedError."""

    STORAGE_SCHEME = ["async+homepocket-memory"]  # noqa: RUF012 (limits' registry reads it)

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        # One queue per window length (a limit's period), keys least recently used first:
        # the front key's newest event is the oldest of the queue.
        self._windows: dict[int, OrderedDict[str, _Events]] = {}

    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError

    def _events(self, key: str, expiry: int, now: float) -> _Events:
        keys = self._windows.get(expiry)
        if keys is None:
            keys = self._windows[expiry] = OrderedDict()
        cutoff = now - expiry
        for _ in range(DROP_PER_CALL):  # the least recently used keys, when idle a window
            if not keys:
                break
            oldest = next(iter(keys.values()))
            if oldest.entries and oldest.entries[-1][0] > cutoff:
                break
            keys.popitem(last=False)
        events = keys.get(key)
        if events is None:
            events = keys[key] = _Events()
        else:
            keys.move_to_end(key)
            events.expire(cutoff)
        return events

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        events = self._events(key, expiry, now)
        if events.total + amount > limit:
            return False
        events.entries.append((now, amount))
        events.total += amount
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(the time of the oldest event in the window, how many there are)."""
        now = time.time()
        events = self._events(key, expiry, now)
        if not events.entries:
            return now, 0
        return events.entries[0][0], events.total

    async def clear(self, key: str) -> None:
        for keys in self._windows.values():
            keys.pop(key, None)

    async def reset(self) -> int | None:
        count = sum(len(keys) for keys in self._windows.values())
        self._windows.clear()
        return count

    async def check(self) -> bool:
        return True

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("moving window only")

    async def get(self, key: str) -> int:
        raise NotImplementedError("moving window only")

    async def get_expiry(self, key: str) -> float:
        raise NotImplementedError("moving window only")
