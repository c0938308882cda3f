"""Rate limits of docs/CONTRACT.md §6 on the `limits` library's async API.

Counters live in Redis when REDIS_URL is set (so every instance shares them) and in
memory otherwise (infra/ratelimit_memory.py). Keys are a limit name and a device_id
or an `ip_ref`, never a raw IP.
A moving window: exact, so "5 failures per 10 minutes" means exactly that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from infra.errors import ApiError
from infra.ratelimit_memory import MemoryWindows
from infra.settings import Settings


class LimitStoreDown(Exception):
    """The counter store did not answer: the caller chooses to fail open or closed."""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int | None  # None: not read (an allowed call that needs no headers)
    reset_at: float | None
    window_s: int

    def headers(self) -> dict[str, str]:
        assert self.remaining is not None and self.reset_at is not None, "counts not read"
        retry = max(1, math.ceil(self.reset_at - time.time()))
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            out["Retry-After"] = str(retry)
        return out

    def error(self) -> ApiError:
        assert self.reset_at is not None, "a refusal's counts are always read"
        retry = max(1, math.ceil(self.reset_at - time.time()))
        return ApiError(
            "RATE_LIMIT_EXCEEDED",
            "Too many requests; try again later.",
            {"limit": self.limit, "window": self.window_s, "retry_after": retry},
            headers=self.headers(),
        )


def _window_s(item: RateLimitItem) -> int:
    return int(item.get_expiry())


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: Any = None
        if settings.redis_url:
            import redis.asyncio as aioredis  # production dependency, lazily

            # Our own pool: short timeouts (a down store answers fast) and closed at stop.
            timeout = min(2.0, settings.backend_timeout_s)
            # Blocking: a burst of connects waits for a connection rather than failing
            # open with "Too many connections" (uncounted) past the default pool size.
            self._pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=REDIS_POOL_SIZE,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=redis_retry(),
            )
            self._storage = storage_from_string(
                "async+" + settings.redis_url,
                implementation="redispy",
                connection_pool=self._pool,
            )
        else:
            self._storage = MemoryWindows()
        self._strategy = MovingWindowRateLimiter(self._storage)

    def item(self, name: str) -> RateLimitItem | None:
        return self._settings.rate_limit(name)

    async def hit(
        self, name: str, key: str, cost: int = 1, *, counts: bool = True
    ) -> Verdict | None:
        """Count one call; None when this limit is off. `counts=False`: the window's
        counts (a second round trip) are read only for a refusal, whose error needs
        them; an allowed call's Verdict then has no `remaining` for headers."""
        item = self.item(name)
        if item is None:
            return None
        try:
            allowed = await self._strategy.hit(item, name, key, cost=cost)
            if allowed and not counts:
                return Verdict(True, item.amount, None, None, _window_s(item))
            stats = await self._strategy.get_window_stats(item, name, key)
        except Exception as exc:  # redis errors differ by driver; all mean "down"
            raise LimitStoreDown(name) from exc
        return Verdict(allowed, item.amount, stats.remaining, stats.reset_time, _window_s(item))

    async def test(self, name: str, key: str) -> Verdict | None:
        """Would a call pass now? Counts nothing (for limits on failures only)."""
        item = self.item(name)
        if item is None:
            return None
        try:
            allowed = await self._strategy.test(item, name, key)
            stats = await self._strategy.get_window_stats(item, name, key)
        except Exception as exc:
            raise LimitStoreDown(name) from exc
        return Verdict(allowed, item.amount, stats.remaining, stats.reset_time, _window_s(item))

    async def reset(self) -> None:
        await self._strategy.storage.reset()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    async def ping(self) -> None:
        if not await self._strategy.storage.check():
            raise LimitStoreDown("ping")


REDIS_POOL_SIZE = 64  # connections per blocking pool of plain Redis commands


def redis_retry() -> Any:
    """redis-py retries a failed command three times with backoff by default: a hung
    Redis would hold a call four times BACKEND_TIMEOUT_S. Once, at once, and only for a
    dropped connection (a stale pooled one after a restart), never after a timeout."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def fail_closed() -> ApiError:
    return ApiError("SERVICE_UNAVAILABLE", "The rate-limit store is unavailable; try again.")
