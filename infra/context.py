"""The shared services every capability is built with, opened in the app's lifespan.

Capabilities receive this at build time and reach its parts at call time; the relay
replaces `live` and `backlog` with its own when it is wired in, storage `snapshots`.

Rate limits, for every capability: `count_call(infra, NAME, caller.device_id or
infra.ip_key(conn), fail_closed=..., origin=infra.origin(conn))` then, at its place in
the precedence of contract §3, `enforce(verdict, NAME)`. Limits on failures only: `check_call`
first, `count_call` after a failure. A refusal raised outside an HTTP handler (a socket
handshake) is audited with `record_refusal(infra, exc, websocket)`; HTTP handlers need
nothing, the app's ApiError handler does it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, WebSocketRoute

from infra.audit import Audit, Origin
from infra.auth import Authenticator
from infra.clock import Clock, SystemClock
from infra.collector import collect_forever
from infra.db import Database, open_database
from infra.envelope import current_request_id
from infra.errors import ApiError
from infra.ids import IdHasher, client_ip
from infra.looplag import watch_loop_lag
from infra.members import Members
from infra.metrics import RATE_LIMITED
from infra.ports import (
    Backlog,
    BookHooks,
    LiveChannel,
    NoBacklog,
    NoLiveChannel,
    NoSnapshots,
    SnapshotIndex,
)
from infra.ratelimit import REDIS_POOL_SIZE, LimitStoreDown, RateLimiter, Verdict, redis_retry
from infra.ratelimit import fail_closed as limiter_down
from infra.settings import ConfigError, Settings, resolve_id_hash_key

log = logging.getLogger("homepocket")
IP_KEY_PREFIX = "ip:"
Check = Callable[[], Awaitable[None]]


@dataclass
class Capability:
    """One folder's contribution to the app: its routes, docs and lifecycle."""

    name: str
    routes: Sequence[BaseRoute]
    openapi_paths: dict[str, dict[str, object]] = field(default_factory=dict)
    start: Callable[[], Awaitable[None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None
    ready_checks: dict[str, Check] = field(default_factory=dict)
    # Long-lived sockets, served from the app's entry point (see infra.app.App).
    sockets: Sequence[WebSocketRoute] = ()


class Infra:
    db: Database
    hasher: IdHasher
    members: Members
    auth: Authenticator
    audit: Audit
    limiter: RateLimiter

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.hooks = BookHooks()
        self.live: LiveChannel = NoLiveChannel()
        self.backlog: Backlog = NoBacklog()
        self.snapshots: SnapshotIndex = NoSnapshots()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Any = None

    async def open(self) -> None:
        s = self.settings
        self.hasher = IdHasher(resolve_id_hash_key(s).__str__())
        self.db = await open_database(s.database_url, s.data_dir, s.backend_timeout_s)
        if s.migrate_on_start:
            await self.db.migrate()
        self.members = Members(self.db)
        self.auth = Authenticator(self.members, self.hasher, self.clock, s.token_max_lifetime_s)
        self.audit = Audit(self.db, self.clock, s.audit_retention_s)
        self.limiter = RateLimiter(s)
        if s.redis_url:
            await self.check_redis()
        self.spawn(self.audit.purge_forever())
        self.spawn(watch_loop_lag())
        self.spawn(collect_forever())

    def redis(self) -> Any:
        """The shared Redis client (redis.asyncio.Redis) when REDIS_URL is set.

        Capabilities keep their own pub/sub connections; plain commands share this pool.
        """
        if self.settings.redis_url is None:
            raise RuntimeError("REDIS_URL is not set")
        if self._redis is None:
            import redis.asyncio as aioredis  # production dependency, lazily

            timeout = self.settings.backend_timeout_s
            # A blocking pool: past its size a call waits its turn (up to the timeout);
            # the default pool fails it at once ("Too many connections"), which a
            # reconnect storm of thousands of sockets reaches.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.settings.redis_url,
                max_connections=REDIS_POOL_SIZE,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
                retry=redis_retry(),
            )
            self._redis = aioredis.Redis.from_pool(pool)  # owns it: aclose closes it
        return self._redis

    async def check_redis(self) -> None:
        """At start: reachable, and not evicting keys (a backlog must never vanish silently)."""
        client = self.redis()
        try:
            await client.ping()
        except Exception as exc:
            raise ConfigError("REDIS_URL", f"cannot connect ({type(exc).__name__})") from None
        try:
            policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
        except Exception:  # CONFIG is often disabled on managed Redis: nothing to check
            return
        if policy not in (None, "noeviction"):
            raise ConfigError(
                "REDIS_URL", f"Redis must run with maxmemory-policy noeviction, not {policy}"
            )

    def spawn(self, coro: Awaitable[None]) -> None:
        """A background loop owned by the app: cancelled at shutdown."""
        self._tasks.append(asyncio.ensure_future(coro))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.limiter.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        await self.db.close()

    def now(self) -> int:
        return int(self.clock.now())

    def client_ip(self, conn: HTTPConnection) -> str:
        return client_ip(conn.scope, self.settings.trusted_proxies)

    def ip_key(self, conn: HTTPConnection) -> str:
        """Rate-limit key for the caller's address: an HMAC, never the address. The
        `ip:` prefix keeps it apart from device_id keys (same length, both hex)."""
        return IP_KEY_PREFIX + self.hasher.ip_ref_for_limits(self.client_ip(conn))

    def origin(self, conn: HTTPConnection) -> Origin:
        return Origin(
            ip_ref=self.hasher.ip_ref_for_audit(self.client_ip(conn)),
            user_agent=conn.headers.get("user-agent"),
            request_id=current_request_id(conn),
        )


async def count_call(
    infra: Infra,
    name: str,
    key: str,
    *,
    fail_closed: bool,
    origin: Origin | None = None,
    counts: bool = True,
) -> Verdict | None:
    """Count one call against a limit. When the store is down: 503 where the contract
    fails closed (registration, pairing), else let the call through.

    `key` is a device_id or `infra.ip_key(conn)`; pass `origin` so that a refusal's
    audit event carries the blurred `ip_ref`. `counts=False` skips reading the window
    for an allowed call (no rate-limit headers to send: a socket's handshake)."""
    hit = infra.limiter.hit if counts else partial(infra.limiter.hit, counts=False)
    return await _ask(infra, hit, name, key, fail_closed, origin)


async def check_call(
    infra: Infra, name: str, key: str, *, fail_closed: bool, origin: Origin | None = None
) -> Verdict | None:
    """For limits that count only failures (failed pairing verifies): would this call
    pass now? Counts nothing; the caller counts a failure afterwards with `count_call`
    and ignores that verdict. A refusal is audited here."""
    return await _ask(infra, infra.limiter.test, name, key, fail_closed, origin)


async def _ask(
    infra: Infra,
    question: Callable[[str, str], Awaitable[Verdict | None]],
    name: str,
    key: str,
    fail_closed: bool,
    origin: Origin | None,
) -> Verdict | None:
    try:
        verdict = await question(name, key)
    except LimitStoreDown:
        log.warning("rate-limit store unreachable", extra={"limit": name})
        if fail_closed:
            raise limiter_down() from None
        return None
    await _audit_if_refused(infra, verdict, name, key, origin)
    return verdict


async def _audit_if_refused(
    infra: Infra, verdict: Verdict | None, name: str, key: str, origin: Origin | None
) -> None:
    if verdict is None or verdict.allowed:
        return
    await infra.audit.record_throttled(
        ("rate_limit", name, key),
        "rate_limit",
        limit_action(name),
        "refused",
        device_id=None if key.startswith(IP_KEY_PREFIX) else key,
        origin=origin,
    )


def limit_action(name: str) -> str:
    """`RATE_LIMIT_WS_OPS` -> `ws_ops`: the audit action of a limit's refusal."""
    return name.removeprefix("RATE_LIMIT_").lower()


def enforce(verdict: Verdict | None, name: str) -> None:
    """Raise the 429 for a counted call that went over its limit."""
    if verdict is not None and not verdict.allowed:
        RATE_LIMITED.labels(name).inc()
        err = verdict.error()
        err.limit_name = name
        raise err


AUTH_CODES = ("INVALID_TOKEN", "FORBIDDEN")


async def record_refusal(infra: Infra, exc: ApiError, conn: HTTPConnection) -> None:
    """The one place auth failures (401, 403) become audit events, for HTTP and for
    sockets alike. A 401's device is only claimed, never proven, so it is not named
    (else anyone could fill another device's audit export); a 403 comes after the token
    verified, so its device is. Throttled per device or address and reason."""
    if exc.code not in AUTH_CODES:
        return
    reason = str(exc.details.get("reason", "invalid"))
    origin = infra.origin(conn)
    who = exc.device_id or origin.ip_ref
    await infra.audit.record_throttled(
        ("auth", exc.code, reason, who),
        "auth",
        reason,
        exc.code.lower(),
        device_id=exc.device_id,
        origin=origin,
    )
