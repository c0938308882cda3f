"""A Python reference-client device driven over stdin/stdout, for the TypeScript
interop tests: one JSON command per line in, one JSON answer per line out.

In:  {"id": 1, "cmd": "add_entry", "args": {...}}
Out: {"id": 1, "ok": true, "result": ...} or {"id": 1, "ok": false, "error": "..."}
     {"event": "sas", "code": "123456"} when pairing asks the user to compare; the
     test answers with the command "answer_sas" {"match": true}.
Commands run concurrently (pairing waits while the test sends other commands).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from client import pair
from client.device import Device
from client.pair import Invitation


class Driver:
    def __init__(self, server_url: str, directory: Path) -> None:
        self.device = Device.open(directory, server_url, "python")
        self.sas_answer: asyncio.Future[bool] | None = None
        self.invitation: Invitation | None = None

    def emit(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async def compare(self, code: str) -> bool:
        self.sas_answer = asyncio.get_running_loop().create_future()
        self.emit({"event": "sas", "code": code})
        return await self.sas_answer

    async def run(self, cmd: str, args: dict[str, Any]) -> Any:
        d = self.device
        if cmd == "info":
            return {"device_id": d.device_id, "book_id": d.book_id}
        if cmd == "create_book":
            return await d.create_book()
        if cmd == "register":
            await d.register()
            return None
        if cmd == "invite":
            self.invitation = await pair.invite(d)
            return self.invitation.short_code
        if cmd == "run_generator":
            assert self.invitation is not None
            done = await pair.run_generator(d, self.invitation, self.compare, 60)
            return {"sas": done.sas, "peer_device_id": done.peer_device_id}
        if cmd == "run_joiner":
            done = await pair.run_joiner(d, args["code"], self.compare, 60)
            return {"sas": done.sas, "peer_device_id": done.peer_device_id, "book_id": done.book_id}
        if cmd == "answer_sas":
            assert self.sas_answer is not None
            self.sas_answer.set_result(bool(args["match"]))
            return None
        if cmd == "add_entry":
            return d.add_entry(int(args["amount_cents"]), str(args["note"]))
        if cmd == "go_online":
            d.go_online()
            return None
        if cmd == "go_offline":
            await d.go_offline()
            return None
        if cmd == "wait_synced":
            await d.wait_synced(float(args.get("within_s", 15)))
            return None
        if cmd == "wait_entries":
            n = int(args["count"])
            within_s = float(args.get("within_s", 15))
            await d.wait_until(lambda: len(d.ledger.entries()) >= n, within_s)
            return None
        if cmd == "outbox":
            return len(d.state.outbox)
        if cmd == "entries":
            return [
                {
                    "entryId": e.entry_id,
                    "amountCents": e.amount_cents,
                    "currency": e.currency,
                    "note": e.note,
                    "by": e.by,
                    "atMs": e.at_ms,
                    "photoId": e.photo_id,
                }
                for e in d.ledger.entries()
            ]
        if cmd == "attach_photo":
            data = base64.b64decode(args["data"])
            return await d.attach_photo(args["entry_id"], data)
        if cmd == "fetch_photo":
            return base64.b64encode(await d.fetch_photo(args["photo_id"])).decode()
        if cmd == "close":
            await d.close()
            return None
        raise ValueError(f"unknown command {cmd}")

    async def one(self, request: dict[str, Any]) -> None:
        try:
            result = await self.run(request["cmd"], request.get("args") or {})
            self.emit({"id": request["id"], "ok": True, "result": result})
        except Exception as exc:  # reported to the test, which fails on it
            self.emit({"id": request["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"})


async def main() -> None:
    driver = Driver(sys.argv[1], Path(sys.argv[2]))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        task = asyncio.create_task(driver.one(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await driver.device.close()


if __name__ == "__main__":
    asyncio.run(main())
