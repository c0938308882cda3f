"""/ready checks each configured backend and names the one that failed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.services import InProcessServer, redis_server


async def test_ready_names_the_backend_that_failed(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with redis_server() as url:
        settings = make_settings("production", tmp_path, request, redis_url=url, with_s3=False)
        async with InProcessServer(settings) as srv, httpx.AsyncClient(base_url=srv.url) as c:
            assert (await c.get("/ready")).status_code == 200
            await srv.infra.redis().shutdown(nosave=True)
            down = await c.get("/ready")
            assert down.status_code == 503
            error = down.json()["error"]
            assert error["code"] == "SERVICE_UNAVAILABLE"
            assert error["details"] == {"backend": "redis"}
            assert (await c.get("/health")).status_code == 200
