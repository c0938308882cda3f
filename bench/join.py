"""A new device catching up on a book of many ops: time and bytes, with and without a
snapshot, on both brokers, beside y-websocket-server (whose new client receives the
whole document in one sync step).

Usage: .venv/bin/python bench/join.py [--ops 10000] [--servers relay,relay-redis,ywss]

Our relay is driven by the reference client (`client/`), as an app would be: Alice's
phone writes the entries (each an encrypted Yjs update), then a new phone pairs with
her (the six digits) and goes online. Without a snapshot it replays every op; with
one (Alice uploads it first, and the server trims what it covers) it downloads the
snapshot and replays what follows. Time runs from `go_online` until the new phone's
ledger holds every entry; bytes are what the server sent on the socket plus the
snapshot's ciphertext. The server runs on core 0, this script (both phones) on core 1.
For y-websocket-server, `join-ywss.mjs` writes the same entries (same document shape,
in clear) and times a new client's sync.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from run import GEN_CORE, start_server, stop  # noqa: E402

from client import pair  # noqa: E402
from client.device import Device  # noqa: E402
from client.identity import Identity  # noqa: E402

NEVER = 10**12  # Alice's automatic snapshots are off: the bench says when


def phone(url: str, name: str) -> Device:
    return Device(
        url, Identity.generate(), name, snapshot_after_ops=NEVER, snapshot_after_bytes=NEVER
    )


async def catch_up(url: str, alice: Device, ops: int) -> dict[str, Any]:
    newcomer = phone(url, "new")
    try:
        await newcomer.register()
        await pair.side_by_side(alice, newcomer)
        started = time.perf_counter()
        newcomer.go_online()
        await newcomer.wait_until(lambda: len(newcomer.ledger.entries()) == ops, within_s=600)
        seconds = time.perf_counter() - started
        assert newcomer.session is not None
        socket_bytes = newcomer.session.received_bytes
        blob_bytes = newcomer.api.blob_bytes_received
        assert newcomer.ledger.entries() == alice.ledger.entries()
        return {
            "seconds": round(seconds, 3),
            "socket_bytes": socket_bytes,
            "snapshot_bytes": blob_bytes,
            "bytes": socket_bytes + blob_bytes,
        }
    finally:
        await newcomer.close()


async def relay_case(kind: str, ops: int, tmp: Path) -> dict[str, Any]:
    data = tmp / f"{kind}-data"
    data.mkdir()
    (data / "id_hash_key").write_text(secrets.token_hex(32))
    server = start_server(kind, data, tmp / "servers.log")
    url = f"http://127.0.0.1:{server.port}"
    alice = phone(url, "alice")
    try:
        await alice.create_book()
        alice.go_online()
        for n in range(ops):
            alice.add_entry(-(n % 9000) - 100, f"entry {n}")
            if n % 500 == 499:
                await alice.wait_synced(within_s=120)
        await alice.wait_synced(within_s=300)
        without = await catch_up(url, alice, ops)
        snapshot = await alice.upload_snapshot()
        with_snapshot = await catch_up(url, alice, ops)
        return {
            "ops": ops,
            "without_snapshot": without,
            "with_snapshot": with_snapshot,
            "snapshot": {k: snapshot[k] for k in ("covers_seq", "size_bytes")},
        }
    finally:
        await alice.close()
        stop(server.proc)
        stop(server.redis)


def ywss_case(ops: int, tmp: Path) -> dict[str, Any]:
    server = start_server("ywss", None, tmp / "servers.log")
    try:
        out = subprocess.run(
            [
                "taskset",
                "-c",
                GEN_CORE,
                "node",
                str(HERE / "join-ywss.mjs"),
                f"ws://127.0.0.1:{server.port}",
                str(ops),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=str(HERE),
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            return {"error": (out.stderr or out.stdout)[-800:]}
        result: dict[str, Any] = json.loads(lines[-1])
        return result
    finally:
        stop(server.proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--servers", default="relay,relay-redis,ywss")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    os.sched_setaffinity(0, {int(GEN_CORE)})
    if not (HERE / "node_modules").exists():
        subprocess.run(["npm", "ci", "--silent"], cwd=HERE, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="hp-join-"))
    results: dict[str, Any] = {}
    try:
        for kind in args.servers.split(","):
            if kind == "ywss":
                results[kind] = ywss_case(args.ops, tmp)
            else:
                results[kind] = asyncio.run(relay_case(kind, args.ops, tmp))
            print(kind, json.dumps(results[kind]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| server | case | seconds | bytes to the new device |\n|---|---|---|---|")
    for kind, res in results.items():
        if "error" in res:
            print(f"| {kind} | failed: {res['error'][:120]} | | |")
            continue
        cases = (
            [("whole document", res)]
            if kind == "ywss"
            else [
                ("replay of every op", res["without_snapshot"]),
                ("snapshot + the ops after it", res["with_snapshot"]),
            ]
        )
        for label, case in cases:
            print(f"| {kind} | {label} | {case['seconds']} | {case['bytes']:,} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
