"""`homepocket-relay demo`: two phones pair, keep a ledger together through the relay
(one of them offline for a while), share an encrypted photo, save a snapshot, and a
third phone joins while the other two are offline and gets the whole ledger from the
server alone — then what the server saw, which is only ciphertext sizes and hashed ids.

Runs a server on the embedded default in a temporary folder unless given `--server`.
Every key and plaintext stays in this process's two Device objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client import pair
from client.device import Device
from client.identity import unb64
from client.ledger import Entry

Say = Callable[[str], None]


@dataclass
class DemoResult:
    """What the scenario ended with, for the tests to check."""

    ledgers: dict[str, list[Entry]]
    sas: dict[str, str]
    photo_ok: bool
    server_view: dict[str, Any]
    op_payloads: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def embedded_server(
    data_dir: Path, environ: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """The real server (embedded default: SQLite, in-process broker, local blob folder)
    under uvicorn in this event loop, on a free loopback port. `environ` holds settings
    by their variable names (the web demo allows its page's origin)."""
    import uvicorn

    from infra.app import create_app
    from infra.serving import uvicorn_config
    from infra.settings import Settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    base = Settings.from_env(environ=dict(environ or {}), env_file=None)
    settings = Settings(
        **{**base.__dict__, "host": "127.0.0.1", "port": port, "data_dir": data_dir}
    )
    config = uvicorn_config(
        create_app(settings), settings, ws_ping_interval=None, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped during start-up")
            await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def run_scenario(server_url: str, workdir: Path, say: Say = print) -> DemoResult:
    alice = Device.open(workdir / "alice", server_url, "Alice")
    bob = Device.open(workdir / "bob", server_url, "Bob")
    carol = Device.open(workdir / "carol", server_url, "Carol")
    try:
        return await _story(alice, bob, carol, say)
    finally:
        for phone in (alice, bob, carol):
            await phone.close()


async def _story(alice: Device, bob: Device, carol: Device, say: Say) -> DemoResult:
    say("1. Alice's phone makes a device key and a new book.")
    await alice.create_book()
    say(f"   device {alice.device_id[:12]}… (SHA-256 of its public key); the book key")
    say("   (32 random bytes) is made on the phone and never leaves a phone in clear.")

    say("2. Bob's phone makes its own key and joins Alice's book with a 6-digit code.")
    await bob.register()
    invitation = await pair.invite(alice)
    say(f"   Alice's phone shows {invitation.short_code}; Bob types it in.")
    paired_g, paired_j = await pair.side_by_side(alice, bob, invitation, say)
    say("   The codes match: Alice confirms, and her phone sends the book key to Bob's,")
    say("   boxed from her key to his (crypto_box) — the server passes along bytes it")
    say("   cannot open.")

    say("3. Both phones go online. Alice records the groceries.")
    alice.go_online()
    bob.go_online()
    await asyncio.gather(alice.wait_synced(), bob.wait_synced())
    groceries = alice.add_entry(-4250, "Groceries")
    await bob.wait_until(lambda: len(bob.ledger.entries()) == 1)
    say("   Bob's phone has it a moment later.")

    say("4. Bob's phone goes offline (airplane mode). Both keep writing.")
    await bob.go_offline()
    alice.add_entry(-6120, "Electricity bill")
    alice.add_entry(-380, "Bakery")
    bob.add_entry(-1299, "Pharmacy")
    await alice.wait_synced()
    say("   Alice's 2 entries are relayed and acked; Bob's entry waits in his outbox")
    say(f"   ({len(bob.state.outbox)} op queued, kept until the server acks it).")

    position = bob.state.position
    say(f"5. Bob reconnects and resumes from seq {position.seq} of epoch {position.epoch}.")
    bob.go_online()
    await bob.wait_synced()
    await alice.wait_until(lambda: len(alice.ledger.entries()) == 4)
    await bob.wait_until(lambda: len(bob.ledger.entries()) == 4)
    say("   He receives Alice's 2 entries; his queued entry is acked and reaches Alice.")

    say("6. Alice attaches a photo of the receipt.")
    receipt = b"\xff\xd8\xff\xe0 receipt: bread 3.80, milk 1.20 " + os.urandom(24_000)
    photo_id = await alice.attach_photo(groceries, receipt)
    say(f"   {len(receipt)} bytes encrypted on her phone, uploaded to a presigned URL.")
    await bob.wait_until(lambda: any(e.photo_id for e in bob.ledger.entries()))
    fetched = await bob.fetch_photo(photo_id)
    photo_ok = fetched == receipt
    say(
        "   Bob's phone downloads and decrypts it: "
        + ("the same bytes as the original." if photo_ok else "NOT THE ORIGINAL.")
    )
    await asyncio.gather(alice.wait_synced(), bob.wait_synced())

    say("7. Alice's phone saves the whole ledger as one encrypted snapshot.")
    snapshot = await alice.upload_snapshot()
    say(
        f"   {snapshot['size_bytes']} bytes of ciphertext covering seq 1-{snapshot['covers_seq']};"
        " the server drops the ops it covers."
    )
    bob.add_entry(-250, "Bus ticket")
    await bob.wait_synced()
    await alice.wait_until(lambda: len(alice.ledger.entries()) == 5)

    say("8. Carol's new phone joins with a code from Alice; then Alice's and Bob's phones")
    say("   go offline. No other phone is online when Carol's syncs.")
    await carol.register()
    await pair.side_by_side(alice, carol)
    await alice.go_offline()
    await bob.go_offline()
    carol.go_online()
    await carol.wait_until(lambda: len(carol.ledger.entries()) == 5)
    await carol.wait_synced()
    assert carol.session is not None
    say(f"   Carol's phone loads the snapshot ({carol.api.blob_bytes_received} bytes) and the op")
    say("   after it: the whole ledger, from the server alone.")

    say("")
    say("The ledger, as the three phones now hold it:")
    for entry in alice.ledger.entries():
        say("   " + entry.line())
    same = alice.ledger.entries() == bob.ledger.entries() == carol.ledger.entries()
    say(
        f"   balance {alice.ledger.balance_cents() / 100:.2f} EUR — Alice's, Bob's and Carol's"
        " copies are " + ("identical." if same else "DIFFERENT.")
    )

    view, payloads = await _server_view(alice, photo_id)
    say("")
    say("What the server saw:")
    for line in _describe(view):
        say("   " + line)
    return DemoResult(
        ledgers={
            "alice": alice.ledger.entries(),
            "bob": bob.ledger.entries(),
            "carol": carol.ledger.entries(),
        },
        sas={"alice": paired_g.sas, "bob": paired_j.sas},
        photo_ok=photo_ok,
        server_view=view,
        op_payloads=payloads,
    )


async def _server_view(device: Device, photo_id: str) -> tuple[dict[str, Any], list[bytes]]:
    """Everything the server can tell about this book, through its own API."""
    status = await device.api.sync_status()
    devices = await device.api.devices()
    ops = await device.api.ops(since=0)
    photo = await device.api.photo_get(photo_id)
    payloads = [unb64(op["payload"]) for op in ops["ops"]]
    view = {
        "sync_status": status,
        "devices": [d["device_id"] for d in devices["devices"]],
        "ops": [
            {"seq": op["seq"], "device_id": op["device_id"], "bytes": len(p)}
            for op, p in zip(ops["ops"], payloads, strict=True)
        ],
        "photo": {"photo_id": photo["photo_id"], "size_bytes": photo["size_bytes"]},
    }
    return view, payloads


def _describe(view: dict[str, Any]) -> list[str]:
    status = view["sync_status"]
    lines = [f"devices: {', '.join(d[:12] + '…' for d in view['devices'])} (key fingerprints)"]
    lines.append(
        f"ops: {status['ops_total']} in epoch {status['epoch']}, latest seq {status['latest_seq']},"
        f" backlog {status['backlog']['retained_ops']} ops retained"
    )
    snapshot = status.get("snapshot")
    if snapshot:
        lines.append(
            f"snapshot covering seq 1-{snapshot['covers_seq']}:"
            f" {snapshot['size_bytes']} bytes of ciphertext"
        )
    for op in view["ops"]:
        lines.append(f"  seq {op['seq']:>2}  from {op['device_id'][:12]}…  {op['bytes']:>6} bytes")
    photo = view["photo"]
    lines.append(f"photo {photo['photo_id']}: {photo['size_bytes']} bytes of ciphertext")
    lines.append("no amount, note, name, key or photo pixel: those stay on the phones.")
    return lines


async def _main(server_url: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="homepocket-demo-") as tmp:
        root = Path(tmp)
        if server_url:
            print(f"Home Pocket demo against {server_url}\n")
            result = await run_scenario(server_url, root / "phones")
        else:
            async with embedded_server(root / "server") as url:
                print(f"Home Pocket demo: a relay on the embedded default at {url}\n")
                result = await run_scenario(url, root / "phones")
    converged = result.ledgers["alice"] == result.ledgers["bob"]
    return 0 if converged and result.photo_ok else 1


def main(server_url: str | None = None) -> int:
    return asyncio.run(_main(server_url))
