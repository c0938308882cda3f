"""`homepocket-relay demo --web`: two phones side by side in a browser, built on the
TypeScript client (clients/ts), talking to a real relay.

Serves the page (`client/web/index.html` and its bundle `demo.js`, built from
`clients/ts/demo/app.ts`) on one port and, unless given `--server`, runs a relay on the
embedded default in a temporary folder that allows the page's origin. Every key and
plaintext stays in the browser tab: this process only serves files and relays
ciphertext.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from client.demo import embedded_server

PAGE = Path(__file__).resolve().parent / "web"


def page_app(relay_url: str) -> Starlette:
    async def index(request: Request) -> Response:
        return FileResponse(PAGE / "index.html", headers={"Cache-Control": "no-store"})

    async def bundle(request: Request) -> Response:
        return FileResponse(PAGE / "demo.js", media_type="text/javascript")

    async def config(request: Request) -> Response:
        return JSONResponse({"relay": relay_url}, headers={"Cache-Control": "no-store"})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/demo.js", bundle),
            Route("/config.json", config),
        ]
    )


async def _serve(server_url: str | None, port: int) -> int:
    origin = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="homepocket-web-") as tmp:
        if server_url:
            relay = server_url.rstrip("/")
            print(f"The page talks to {relay}: its ALLOWED_ORIGINS must hold {origin}")
            return await _page(relay, port, origin)
        # The page may reconnect as often as the user toggles a phone off and on.
        environ = {"ALLOWED_ORIGINS": origin, "RATE_LIMIT_WS_CONNECT": "off"}
        async with embedded_server(Path(tmp) / "server", environ) as relay:
            print(f"A relay on the embedded default at {relay}")
            return await _page(relay, port, origin)


async def _page(relay: str, port: int, origin: str) -> int:
    import uvicorn

    config = uvicorn.Config(page_app(relay), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            if task.done():
                task.result()
                return 1
            await asyncio.sleep(0.02)
    print(f"Open {origin}/ in a browser: two phones pair with six digits and sync.", flush=True)
    await task
    return 0


def main(server_url: str | None = None, port: int = 8000) -> int:
    try:
        return asyncio.run(_serve(server_url, port))
    except KeyboardInterrupt:
        return 0
