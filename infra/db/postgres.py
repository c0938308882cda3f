"""PostgreSQL backend (production) through an asyncpg pool."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from infra.db import Queries, Row, load_migrations

# pg_advisory_lock key: instances starting together migrate one after the other.
_MIGRATION_LOCK = 0x484F4D45504F434B  # "HOMEPOCK"


def _rowcount(status: str) -> int:
    """asyncpg returns a status like 'UPDATE 3'; the count is its last word."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _Conn:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self._conn.fetchrow(sql, *args)
        return dict(row) if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._conn.execute(sql, *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str) -> PostgresDatabase:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=10, command_timeout=10)
        return cls(pool)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._pool.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self._pool.fetchrow(sql, *args)
        return dict(row) if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._pool.execute(sql, *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._pool.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queries]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _Conn(conn)

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._pool.close()

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
