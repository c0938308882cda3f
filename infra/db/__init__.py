"""The metadata store: one small interface, PostgreSQL (asyncpg) or SQLite (embedded).

Capability code writes one SQL text for both, with `$1`-style parameters; the SQLite
backend rewrites them to `?1`. Rows come back as plain dicts. Only hashed identifiers
and counts are ever stored (docs/CONTRACT.md §1): no payload, no raw book_id, no raw IP.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

Row = dict[str, Any]


class Queries(Protocol):
    """What can run inside or outside a transaction."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Database(Queries, Protocol):
    dialect: str  # "postgresql" or "sqlite"

    def transaction(self) -> AbstractAsyncContextManager[Queries]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply pending migrations, safely when several instances start at once."""
        ...


async def open_database(url: str | None, data_dir: Path, timeout_s: float = 5.0) -> Database:
    """PostgreSQL for a postgresql:// URL, else SQLite (in the data dir by default).
    `timeout_s` (BACKEND_TIMEOUT_S) bounds each call; one that fails for the database
    raises `infra.errors.Unavailable` with DATABASE_ERROR."""
    if url and urlsplit(url).scheme in ("postgresql", "postgres"):
        from infra.db.postgres import PostgresDatabase  # production dependency, lazily

        return await PostgresDatabase.connect(url, timeout_s)
    from infra.db.sqlite import SqliteDatabase

    if url:  # sqlite:///path/to/file.db
        path = Path(urlsplit(url).path)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at start)
        path = data_dir / "homepocket.sqlite3"
    return await SqliteDatabase.connect(path, timeout_s)


def load_migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, sql) in order, with the few dialect tokens filled in."""
    tokens = {
        "postgresql": {"{{serial_pk}}": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"},
        "sqlite": {"{{serial_pk}}": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    }[dialect]
    out = []
    for path in sorted((Path(__file__).parent / "migrations").glob("*.sql")):
        sql = path.read_text()
        for token, value in tokens.items():
            sql = sql.replace(token, value)
        out.append((int(path.name.split("_", 1)[0]), sql))
    return out
