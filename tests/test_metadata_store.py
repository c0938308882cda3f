"""The metadata store's contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.db import Database, open_database
from infra.errors import ApiError
from infra.members import MEMBER, PENDING, Members


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "postgresql":
        from tests.support.services import postgres_database

        with postgres_database() as url:
            database = await open_database(url, tmp_path)
            await database.migrate()
            try:
                yield database
            finally:
                await database.close()
    else:
        database = await open_database(None, tmp_path)
        await database.migrate()
        try:
            yield database
        finally:
            await database.close()


async def test_migrations_are_idempotent(db: Database) -> None:
    assert await db.migrate() == []
    rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert rows[0]["version"] == 1


async def test_parameters_and_rowcounts(db: Database) -> None:
    await db.execute("INSERT INTO books (book_ref, created_at) VALUES ($1, $2)", "r1", 10)
    await db.executemany(
        "INSERT INTO books (book_ref, created_at) VALUES ($1, $2)", [("r2", 20), ("r3", 30)]
    )
    assert await db.execute("UPDATE books SET created_at = $1 WHERE created_at > $2", 99, 15) == 2
    row = await db.fetchrow("SELECT COUNT(*) AS n FROM books WHERE created_at = $1", 99)
    assert row is not None and row["n"] == 2
    assert await db.fetchrow("SELECT * FROM books WHERE book_ref = $1", "missing") is None


async def test_transaction_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO books (book_ref, created_at) VALUES ($1, $2)", "x", 1)
            raise RuntimeError("abort")
    assert await db.fetchrow("SELECT 1 AS x FROM books WHERE book_ref = $1", "x") is None


async def test_register_and_membership_rules(db: Database) -> None:
    members = Members(db)
    first = await members.register("a" * 32, "keyA", "book-1", now=100)
    assert first.created and first.device.role == MEMBER and first.device.book_ref == "book-1"
    again = await members.register("a" * 32, "keyA", "book-1", now=101)
    assert not again.created
    with pytest.raises(ApiError) as squat:
        await members.register("b" * 32, "keyB", "book-1", now=102)
    assert squat.value.code == "BOOK_EXISTS"
    with pytest.raises(ApiError) as moved:
        await members.register("a" * 32, "keyA", "book-2", now=103)
    assert moved.value.code == "DEVICE_EXISTS"
    loner = await members.register("c" * 32, "keyC", None, now=104)
    assert loner.created and loner.device.book_ref is None


async def test_pending_members_and_cap(db: Database) -> None:
    members = Members(db)
    await members.register("a" * 32, "keyA", "book-1", now=1)
    await members.register("b" * 32, "keyB", None, now=1)
    await members.register("c" * 32, "keyC", None, now=1)
    assert await members.add_pending("b" * 32, "book-1", cap=2)
    assert not await members.add_pending("c" * 32, "book-1", cap=2)  # full, pending counted
    assert [d.device_id for d in await members.list_book("book-1")] == ["a" * 32]
    assert [d.device_id for d in await members.list_book("book-1", PENDING)] == ["b" * 32]
    assert await members.remove_pending("b" * 32, "book-1")
    assert await members.add_pending("c" * 32, "book-1", cap=2)
    assert await members.promote("c" * 32, "book-1")
    assert len(await members.list_book("book-1")) == 2


async def test_revoke_and_erase(db: Database) -> None:
    members = Members(db)
    await members.register("a" * 32, "keyA", "book-1", now=1)
    await members.register("b" * 32, "keyB", None, now=1)
    await members.add_pending("b" * 32, "book-1", cap=5)
    await members.promote("b" * 32, "book-1")
    revoked, left = await members.revoke("b" * 32, "book-1", now=5)
    assert revoked and left == 1
    assert (await members.get("b" * 32)).revoked  # type: ignore[union-attr]
    await members.erase_book("book-1")
    assert await members.get("a" * 32) is None  # the key may register again
    kept = await members.get("b" * 32)
    assert kept is not None and kept.revoked and kept.book_ref is None
    assert not await members.book_exists("book-1")


async def test_concurrent_registrations_create_one_book(db: Database) -> None:
    members = Members(db)

    async def attempt(i: int) -> str:
        try:
            await members.register(f"{i:032x}", f"key{i}", "contested", now=1)
            return "won"
        except ApiError as exc:
            return exc.code

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert sorted(results) == ["BOOK_EXISTS"] * 7 + ["won"]
    assert await members.count_book("contested") == 1


async def test_two_migrators_at_once(tmp_path: Path) -> None:
    from tests.support.services import postgres_database

    with postgres_database() as url:
        a, b = await open_database(url, tmp_path), await open_database(url, tmp_path)
        try:
            applied = await asyncio.gather(a.migrate(), b.migrate())
            assert sorted(len(x) for x in applied)[0] == 0  # one applied, the other waited
            assert sum(len(x) for x in applied) == len(applied[0] or applied[1])
        finally:
            await a.close()
            await b.close()
