"""PostgreSQL backend (production) through an asyncpg pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from infra.db import Queries, Row, load_migrations
from infra.errors import Unavailable

# pg_advisory_lock key: instances starting together migrate one after the other.
_MIGRATION_LOCK = 0x484F4D45504F434B  # "HOMEPOCK"


def _rowcount(status: str) -> int:
    """asyncpg returns a status like 'UPDATE 3'; the count is its last word."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


# What a database that refused, dropped the connection or did not answer looks like:
# the call fails with `503 DATABASE_ERROR`, never a 500, and the connection is dropped.
_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


def _down() -> Unavailable:
    return Unavailable("DATABASE_ERROR", "database")


class _Conn:
    """A pooled connection inside a transaction: each command bounded."""

    def __init__(self, conn: Any, timeout_s: float) -> None:
        self._conn = conn
        self._timeout_s = timeout_s

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        try:
            return await getattr(self._conn, method)(sql, *args, timeout=self._timeout_s)
        except _DOWN as exc:
            self._conn.terminate()  # never reused: a late answer must not meet the next call
            raise _down() from exc

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._run("fetch", sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self._run("fetchrow", sql, *args)
        return dict(row) if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._run("execute", sql, *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._run("executemany", sql, rows)


class PostgresDatabase:
    """Every call is bounded by `timeout_s` (BACKEND_TIMEOUT_S): taking a pooled
    connection (connecting if none is free) and each command. A database that refuses
    or does not answer in time gives `Unavailable("DATABASE_ERROR")`; the pool makes
    new connections on later calls, so calls recover by themselves."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    @classmethod
    async def connect(cls, url: str, timeout_s: float = 5.0) -> PostgresDatabase:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=10, command_timeout=timeout_s, timeout=timeout_s
        )
        return cls(pool, timeout_s)

    @asynccontextmanager
    async def _acquired(self) -> AsyncIterator[Any]:
        try:
            conn = await self._pool.acquire(timeout=self._timeout_s)
        except _DOWN as exc:
            raise _down() from exc
        try:
            yield conn
        finally:
            try:
                await self._pool.release(conn, timeout=self._timeout_s)
            except _DOWN:  # a connection that could not be reset is dropped by the pool
                pass

    async def _one(self, method: str, sql: str, *args: Any) -> Any:
        async with self._acquired() as conn:
            return await _Conn(conn, self._timeout_s)._run(method, sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._one("fetch", sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self._one("fetchrow", sql, *args)
        return dict(row) if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._one("execute", sql, *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._one("executemany", sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queries]:
        async with self._acquired() as conn:
            queries = _Conn(conn, self._timeout_s)
            await queries.execute("BEGIN")
            try:
                yield queries
            except BaseException:
                if not conn.is_closed():
                    try:
                        await queries.execute("ROLLBACK")
                    except Unavailable:
                        pass  # dropped: the server rolls it back
                raise
            await queries.execute("COMMIT")

    async def ping(self) -> None:
        await self._one("fetchval", "SELECT 1")

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout_s)
        except _DOWN:
            self._pool.terminate()

    async def migrate(self) -> list[int]:
        applied: list[int] = []
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)"
                )
                done = {
                    r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
                }
                for version, script in load_migrations(self.dialect):
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(script)  # simple protocol: many statements at once
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                            version,
                            int(time.time()),
                        )
                    applied.append(version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied
