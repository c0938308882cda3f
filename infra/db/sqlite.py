"""SQLite backend (embedded default): one connection, statements serialised by a lock.

A call that waits longer than `timeout_s` (BACKEND_TIMEOUT_S) for the lock fails with
`Unavailable("DATABASE_ERROR")`, as PostgreSQL's do."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from infra.db import Queries, Row, load_migrations
from infra.errors import Unavailable

_PARAM = re.compile(r"\$(\d+)")


def _sql(text: str) -> str:
    return _PARAM.sub(r"?\1", text)


def split_statements(script: str) -> list[str]:
    """Our migrations hold no `;` inside strings, so a plain split is exact."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class _Conn:
    """Runs statements on the connection; the caller holds the lock."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        # One trip to the connection's thread (execute, fetch, close), not three.
        return [dict(r) for r in await self._conn.execute_fetchall(_sql(sql), args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._conn.execute(_sql(sql), args) as cur:
            row = await cur.fetchone()
            return dict(row) if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._conn.execute(_sql(sql), args) as cur:
            return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(_sql(sql), rows)


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, timeout_s: float = 5.0) -> None:
        self._conn = conn
        self._q = _Conn(conn)
        self._lock = asyncio.Lock()
        self._timeout_s = timeout_s

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._lock.acquire()
        except TimeoutError:
            raise Unavailable("DATABASE_ERROR", "database") from None
        try:
            yield
        finally:
            self._lock.release()

    @classmethod
    async def connect(cls, path: Path, timeout_s: float = 5.0) -> SqliteDatabase:
        conn = await aiosqlite.connect(str(path), isolation_level=None)  # we BEGIN ourselves
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("PRAGMA foreign_keys=ON")
        return cls(conn, timeout_s)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._locked():
            return await self._q.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._locked():
            return await self._q.fetchrow(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._locked():
            return await self._q.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queries]:
        async with self._locked():
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._q
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def ping(self) -> None:
        await self.fetchrow("SELECT 1 AS ok")

    async def close(self) -> None:
        await self._conn.close()

    async def migrate(self) -> list[int]:
        applied: list[int] = []
        async with self.transaction() as tx:  # BEGIN IMMEDIATE: one migrator at a time
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            done = {r["version"] for r in await tx.fetch("SELECT version FROM schema_migrations")}
            for version, script in load_migrations(self.dialect):
                if version in done:
                    continue
                for statement in split_statements(script):
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    version,
                    int(time.time()),
                )
                applied.append(version)
        return applied
