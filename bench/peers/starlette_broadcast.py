"""A bare Starlette broadcast under uvicorn (websockets-sansio, uvloop, httptools).

Relays every frame to the other sockets of the same room: no protocol, no auth, no
backlog. The reference point for what the socket layer alone costs in Python.
Usage: python peers/starlette_broadcast.py PORT
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

rooms: dict[str, set[WebSocket]] = {}


async def relay(ws: WebSocket) -> None:
    name = ws.path_params["room"]
    await ws.accept()
    room = rooms.setdefault(name, set())
    room.add(ws)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            for other in list(room):
                if other is ws:
                    continue
                try:
                    if text is not None:
                        await other.send_text(text)
                    else:
                        await other.send_bytes(message["bytes"])
                except (WebSocketDisconnect, RuntimeError):
                    room.discard(other)
    finally:
        room.discard(ws)
        if not room:
            rooms.pop(name, None)


app = Starlette(routes=[WebSocketRoute("/ws/{room}", relay)])

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
