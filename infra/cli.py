"""`homepocket-relay serve | migrate`: the server's command line (docs/CONTRACT.md §8)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from infra.settings import ConfigError, Settings, resolve_id_hash_key


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "no_migrate", False):
        overrides["migrate_on_start"] = False
    return Settings.from_env(None, ".env", **overrides)


async def _check_and_migrate(settings: Settings, migrate: bool) -> list[int]:
    """Reach every configured backend once before serving, so a bad URL or a server
    that is down is one clear line, not a stack trace from inside the event loop."""
    from infra.db import open_database

    resolve_id_hash_key(settings)
    try:
        db = await asyncio.wait_for(
            open_database(settings.database_url, settings.data_dir, settings.backend_timeout_s),
            15,
        )
    except Exception as exc:
        raise ConfigError("DATABASE_URL", f"cannot connect ({type(exc).__name__})") from None
    try:
        applied = await db.migrate() if migrate else []
    finally:
        await db.close()
    if settings.redis_url:
        from infra.context import Infra

        infra = Infra(settings)
        try:
            await infra.check_redis()
        finally:
            await infra.redis().aclose()
    if settings.s3_bucket:
        from infra.clock import SystemClock
        from storage.blobs import open_blob_store  # the bucket check lives with the store

        store = open_blob_store(settings, SystemClock())
        await store.start()  # ConfigError naming S3_BUCKET when the bucket is unreachable
        await store.close()
    return applied


def _check_backlog_free(settings: Settings) -> None:
    """On the embedded broker the backlog file is one server's: a second server on the
    same data dir is one clear line too."""
    if settings.redis_url:
        return
    from relay.durable import FILE_NAME, BacklogInUse, check_free

    try:
        check_free(settings.data_dir / FILE_NAME)
    except BacklogInUse as exc:
        raise ConfigError("DATA_DIR", str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="homepocket-relay", description="Home Pocket zero-knowledge relay server"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the server")
    serve.add_argument("--host", default=os.environ.get("HOST"))
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--data-dir", default=None)
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not apply database migrations at start"
    )
    migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    migrate.add_argument("--data-dir", default=None)
    demo = sub.add_parser("demo", help="two phones pair and sync through a relay, end to end")
    demo.add_argument("--server", default=None, help="use this server instead of starting one")
    demo.add_argument("--web", action="store_true", help="two phones side by side in a browser")
    demo.add_argument("--port", type=int, default=8000, help="the web page's port (with --web)")
    args = parser.parse_args(argv)
    if args.command == "demo" and args.web:
        from client.web import main as web_main

        return web_main(args.server, args.port)
    if args.command == "demo":
        from client.demo import main as demo_main  # the client is not needed to serve

        return demo_main(args.server)
    try:
        settings = _settings(args)
        if args.command == "migrate":
            applied = asyncio.run(_check_and_migrate(settings, True))
            print(f"migrations applied: {applied or 'none pending'}")
            return 0
        asyncio.run(_check_and_migrate(settings, settings.migrate_on_start))
        _check_backlog_free(settings)
        return _serve(settings)
    except ConfigError as exc:
        print(f"homepocket-relay: configuration error: {exc}", file=sys.stderr)
        return 2


def _serve(settings: Settings) -> int:
    import uvicorn

    from infra.app import create_app
    from infra.collector import schedule_full_collections
    from infra.logs import setup_logging
    from infra.serving import uvicorn_config

    setup_logging(settings.log_level)
    if settings.sentry_dsn is not None:
        from infra.sentry import setup_sentry

        setup_sentry(str(settings.sentry_dsn))
    config = uvicorn_config(create_app(settings), settings)
    # What exists now (modules, the app) lives as long as the process: out of the
    # collector's way, a full collection with thousands of sockets open pauses for
    # half as long (measured: 30-77 ms before, 18-36 ms after, at 1,000 sockets).
    gc.collect()
    gc.freeze()
    # Full collections of what comes later (sockets, the backlog's index) then run on a
    # schedule rather than whenever CPython's rule fires mid-traffic (infra/collector.py).
    schedule_full_collections()
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handler it found: make that handler a clean exit, not a kill or a traceback.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    try:
        server.run()
    except SystemExit as done:
        code = int(done.code or 0)
    else:
        code = 0 if server.started else 1
    if server.started:
        _leave(code, flush_sentry=settings.sentry_dsn is not None)
    return code


def _leave(code: int, flush_sentry: bool) -> NoReturn:
    """Exit once the server has stopped and closed its stores, without the interpreter's
    teardown: after serving 10,000 sockets it took 0.7 s, while every phone waited for
    the restart to reconnect. What atexit would have done that matters is done here."""
    import logging

    if flush_sentry:
        import sentry_sdk

        sentry_sdk.flush(timeout=2.0)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
