"""Fixtures: every contract test runs on the embedded default and on the production
backends (PostgreSQL, Redis, moto's S3 server), all real servers on loopback."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.settings import Settings
from tests.support.services import (
    ID_HASH_KEY,
    InProcessServer,
    ServerProcess,
    moto_s3,
    postgres_database,
    redis_server,
    unhandled_errors,
)

BACKENDS = ["embedded", "production"]


class _Unhandled(logging.Handler):
    """Keeps what the event loop's exception handler and uvicorn's last resort log."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "asyncio" or "Exception in ASGI application" in record.getMessage():
            self.seen.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(autouse=True)
def no_unhandled_exceptions(request: pytest.FixtureRequest) -> Iterator[None]:
    """No exception reaches the event loop's handler or uvicorn's "Exception in ASGI
    application", in this process's servers or in the `serve` processes a test starts."""
    if request.node.get_closest_marker("toy_app_errors"):
        yield
        return
    catcher = _Unhandled()
    loggers = [logging.getLogger(name) for name in ("asyncio", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(catcher)
    ServerProcess.started.clear()
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(catcher)
    found = list(catcher.seen)
    for proc in ServerProcess.started:
        if proc.log_path.exists():
            found += unhandled_errors(proc.log())
    ServerProcess.started.clear()
    assert not found, "unhandled exceptions were logged:\n" + "\n".join(found[:20])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


S3_TEST_BUCKET = "homepocket-test"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server with the test bucket made, as terraform makes it in production."""
    import boto3

    # moto accepts any credentials; the server finds these through the default chain.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    with moto_s3() as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        s3.create_bucket(Bucket=S3_TEST_BUCKET)
        s3.close()
        yield url


async def reset_production(settings: Settings) -> None:
    """Empty every table and key so each test starts clean."""
    import asyncpg
    import redis.asyncio as aioredis

    conn = await asyncpg.connect(settings.database_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        if tables:
            names = ", ".join(f'"{t["tablename"]}"' for t in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY")
    finally:
        await conn.close()
    client = aioredis.from_url(str(settings.redis_url))
    try:
        await client.flushall()
    finally:
        await client.aclose()
    if settings.s3_bucket and settings.s3_endpoint_url:
        empty_bucket(settings.s3_endpoint_url, settings.s3_bucket)


def empty_bucket(endpoint_url: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    finally:
        s3.close()


def make_settings(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, **overrides: Any
) -> Settings:
    base: dict[str, Any] = {"data_dir": tmp_path / "data", "id_hash_key": None}
    if kind == "production":
        from starlette.datastructures import Secret

        base.update(
            database_url=request.getfixturevalue("pg_url"),
            redis_url=request.getfixturevalue("redis_url"),
            id_hash_key=Secret(ID_HASH_KEY),
        )
        if overrides.pop("with_s3", True):
            base.update(
                s3_bucket=S3_TEST_BUCKET,
                aws_region="us-east-1",
                s3_endpoint_url=request.getfixturevalue("s3_endpoint"),
            )
    else:
        overrides.pop("with_s3", None)
    env_free = Settings.from_env(environ={}, env_file=None)
    return Settings(**{**env_free.__dict__, **base, **overrides})


async def fresh_settings(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, **overrides: Any
) -> Settings:
    """`make_settings` for a server of the test's own, on emptied production backends."""
    s = make_settings(kind, tmp_path, request, **overrides)
    if kind == "production":
        await reset_production(s)
    return s


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    s = make_settings(backend, tmp_path, request)
    if backend == "production":
        await reset_production(s)
    return s


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[InProcessServer]:
    async with InProcessServer(settings) as srv:
        yield srv


@pytest.fixture
async def client(server: InProcessServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c
