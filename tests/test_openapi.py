"""/openapi.json describes every HTTP endpoint the app serves, with its error codes."""

from __future__ import annotations

import re

import httpx
from starlette.routing import Route

from tests.support.services import InProcessServer


async def test_every_route_is_described(server: InProcessServer, client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    missing = []
    for route in server.app.routes:
        if not isinstance(route, Route):
            continue  # WebSocket routes are described in the relay's protocol document
        documented = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {key:path} -> {key}
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if method.lower() not in paths.get(documented, {}):
                missing.append(f"{method} {route.path}")
    assert missing == []
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation["responses"], (method, path)
            if path.startswith("/api/v1/"):
                codes = " ".join(r.get("description", "") for r in operation["responses"].values())
                assert "INVALID_TOKEN" in codes or "security" not in operation, (method, path)
