"""Make bench devices members of their books, through the server's own metadata store.

There is no way for a device to join a book over the API but pairing, which the bench
does not exercise; so, while no server runs on the data dir, the devices that
registered bookless over HTTP are made pending and promoted with `infra.members`,
exactly as a confirmed pairing would leave them.

Usage: python bench/membership.py DATA_DIR DEVICES_JSON
(`DATABASE_URL` and `ID_HASH_KEY` from the environment, when set, as the server reads them)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from infra.db import open_database
from infra.ids import IdHasher
from infra.members import Members
from infra.settings import Settings, resolve_id_hash_key


def joiners(devices: list[dict[str, object]]) -> list[tuple[str, str]]:
    """(device_id, book_id) of every device that did not create its book."""
    return [(str(d["device_id"]), str(d["book_id"])) for d in devices if not d["first"]]


async def join_all(data_dir: Path, devices: list[dict[str, object]]) -> int:
    chosen = {k: v for k, v in os.environ.items() if k in ("DATABASE_URL", "ID_HASH_KEY")}
    settings = Settings.from_env(chosen, None, data_dir=data_dir)
    hasher = IdHasher(str(resolve_id_hash_key(settings)))
    db = await open_database(settings.database_url, data_dir)
    members = Members(db)
    done = 0
    try:
        for device_id, book_id in joiners(devices):
            book_ref = hasher.book_ref(book_id)
            device = await members.get(device_id)
            if device is None:
                raise SystemExit(f"device {device_id} is not registered")
            if device.is_member_of(book_ref):
                continue
            if not await members.add_pending(device_id, book_ref, settings.max_devices_per_book):
                raise SystemExit("book full")
            await members.promote(device_id, book_ref)
            done += 1
    finally:
        await db.close()
    return done


if __name__ == "__main__":
    data_dir, devices_file = Path(sys.argv[1]), Path(sys.argv[2])
    made = asyncio.run(join_all(data_dir, json.loads(devices_file.read_text())))
    print(made)
