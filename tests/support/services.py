"""Real services for the tests: a private Redis, a fresh PostgreSQL database, moto's
S3 server, and uvicorn servers (in this process or as real `homepocket-relay` ones).

Nothing is mocked: each runs as its own server on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import uvicorn

from infra.app import create_app
from infra.serving import uvicorn_config
from infra.settings import Settings

ID_HASH_KEY = "test-id-hash-key-0123456789abcdef0123456789abcdef"
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server: tests may FLUSHALL or kill it without touching anyone else."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run scripts/test (it installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the PostgreSQL server, dropped afterwards."""
    import asyncpg

    name = "hp_test_" + uuid.uuid4().hex[:12]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run(sql: str) -> None:  # callable from inside a running event loop too
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(admin(sql))).result()

    run(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3-compatible HTTP server."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class InProcessServer:
    """The real app under a real uvicorn, on a loopback port, in the test's event loop."""

    def __init__(
        self, settings: Settings, uvicorn_options: dict[str, Any] | None = None, **app_kw: Any
    ) -> None:
        self.port = free_port()
        self.settings = Settings(**{**settings.__dict__, "port": self.port, "host": "127.0.0.1"})
        self.app = create_app(self.settings, **app_kw)
        self.config = uvicorn_config(
            self.app,
            self.settings,
            ws_ping_timeout=max(
                0.2, self.settings.heartbeat_timeout_s - self.settings.heartbeat_interval_s
            ),
            lifespan="on",
            timeout_graceful_shutdown=2,
            **(uvicorn_options or {}),
        )
        self.server = uvicorn.Server(self.config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def infra(self) -> Any:
        return self.app.state.infra

    async def __aenter__(self) -> InProcessServer:
        self._task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 15
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("server stopped during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 15)
        except TimeoutError:
            where = task_stacks()  # before the cancel unwinds them
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)  # never a second hang
            stuck = f"the server did not stop within 15 s; its tasks:\n{where}"
            raise AssertionError(stuck) from None


def task_stacks() -> str:
    """Where each task of the running loop waits, down its chain of awaits (a task's own
    stack stops at its outermost coroutine): what a hung shutdown is stuck on."""
    lines = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        lines.append(f"{task.get_name()}:")
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is None:
                lines.append(f"    awaiting {awaited!r}"[:300])
                break
            lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return "\n".join(lines)


# What only an exception nobody handled prints: the event loop's handler (logger
# "asyncio": "Task exception was never retrieved", "Fatal error on transport", ...) and
# uvicorn's last resort. A test fails when one of its servers logged any of them.
UNHANDLED = ('"logger":"asyncio"', "Exception in ASGI application", "never retrieved")


def unhandled_errors(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if any(mark in line for mark in UNHANDLED)]


class ServerProcess:
    """`homepocket-relay serve` as a real process."""

    started: ClassVar[list[ServerProcess]] = []  # since the current test began

    def __init__(self, env: dict[str, str], data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        ServerProcess.started.append(self)
        exe = Path(sys.executable).parent / "homepocket-relay"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [str(exe), "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("server process did not start")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.asynccontextmanager
async def running(settings: Settings, **kw: Any) -> AsyncIterator[InProcessServer]:
    async with InProcessServer(settings, **kw) as server:
        yield server
