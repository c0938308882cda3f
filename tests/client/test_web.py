"""`homepocket-relay demo --web` serves the page, its bundle and the relay's address;
the page itself is driven in a browser by clients/ts/test/demo.test.mjs."""

from __future__ import annotations

import httpx

from client.web import PAGE, page_app


async def test_the_page_its_bundle_and_its_relay() -> None:
    transport = httpx.ASGITransport(app=page_app("http://127.0.0.1:9"))
    async with httpx.AsyncClient(transport=transport, base_url="http://page") as http:
        index = await http.get("/")
        assert index.status_code == 200
        assert '<script type="module" src="/demo.js">' in index.text
        bundle = await http.get("/demo.js")
        assert bundle.status_code == 200
        assert bundle.headers["content-type"].startswith("text/javascript")
        assert bundle.content == (PAGE / "demo.js").read_bytes()
        assert (await http.get("/config.json")).json() == {"relay": "http://127.0.0.1:9"}
        assert (await http.get("/elsewhere")).status_code == 404
