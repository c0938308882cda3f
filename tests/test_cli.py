"""The command line: a real `homepocket-relay serve` process, `migrate`, and one clear
line per misconfiguration."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.keys import DeviceKey
from tests.support.services import ID_HASH_KEY, ServerProcess

EXE = str(Path(sys.executable).parent / "homepocket-relay")
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("DATABASE_URL", "REDIS_URL", "S3_BUCKET", "ID_HASH_KEY")
}


def register_over_http(url: str) -> None:
    device = DeviceKey()
    book_id = str(uuid.uuid4())
    device.book_id = book_id
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/health").status_code == 200
        response = c.post(
            "/api/v1/devices",
            json={"public_key": device.public_b64, "book_id": book_id},
            headers=device.auth(),
        )
        assert response.status_code == 201, response.text
        listed = c.get(f"/api/v1/books/{book_id}/devices", headers=device.auth())
        assert listed.json()["data"]["total_count"] == 1


def test_serve_embedded_registers_a_device(tmp_path: Path) -> None:
    server = ServerProcess(CLEAN_ENV, tmp_path / "data").start()
    try:
        register_over_http(server.url)
    finally:
        assert server.stop() == 0
    assert (tmp_path / "data" / "homepocket.sqlite3").exists()
    key_file = tmp_path / "data" / "id_hash_key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    log = server.log()
    assert "Traceback" not in log
    assert '"route":"/api/v1/devices"' in log
    # It leaves without the interpreter's teardown, but only once all is written.
    assert "Finished server process" in log.splitlines()[-1]


def test_serve_on_postgres_and_redis(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    env = {**CLEAN_ENV, "DATABASE_URL": pg_url, "REDIS_URL": redis_url, "ID_HASH_KEY": ID_HASH_KEY}
    server = ServerProcess(env, tmp_path / "data").start()
    try:
        register_over_http(server.url)
        with httpx.Client(base_url=server.url) as c:
            ready = c.get("/ready").json()["data"]
            assert {"database", "redis"} <= set(ready["backends"])
    finally:
        assert server.stop() == 0


def test_migrate_command(tmp_path: Path, pg_url: str) -> None:
    env = {**CLEAN_ENV, "DATABASE_URL": pg_url, "ID_HASH_KEY": ID_HASH_KEY}
    out = subprocess.run([EXE, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "migrations applied" in out.stdout


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "redis://127.0.0.1:6379"}, "ID_HASH_KEY"),
        ({"ID_HASH_KEY": "changeme"}, "ID_HASH_KEY"),
        ({"RATE_LIMIT_REGISTRATION": "lots"}, "RATE_LIMIT_REGISTRATION"),
        ({"MAX_OP_BYTES": "big"}, "MAX_OP_BYTES"),
        ({"ALLOWED_ORIGINS": "*"}, "ALLOWED_ORIGINS"),
        ({"TRUSTED_PROXIES": "not-an-ip"}, "TRUSTED_PROXIES"),
        ({"PUBLIC_URL": "ftp://x"}, "PUBLIC_URL"),
        (
            {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "ID_HASH_KEY": ID_HASH_KEY},
            "DATABASE_URL",
        ),
        ({"REDIS_URL": "redis://127.0.0.1:1/0", "ID_HASH_KEY": ID_HASH_KEY}, "REDIS_URL"),
    ],
)
def test_misconfiguration_is_one_clear_line(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    out = subprocess.run(
        [EXE, "serve", "--data-dir", str(tmp_path)],
        env={**CLEAN_ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert variable in lines[0]
    assert "Traceback" not in out.stderr


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RATE_LIMIT_WS_OPS=bogus\n")
    out = subprocess.run(
        [EXE, "serve", "--data-dir", str(tmp_path / "d")],
        env=CLEAN_ENV,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "RATE_LIMIT_WS_OPS" in out.stderr
