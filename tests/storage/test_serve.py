"""A real `homepocket-relay serve` process with photos on the embedded default and on S3,
and the one-line refusal when the bucket cannot be reached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import S3_TEST_BUCKET
from tests.support.keys import DeviceKey
from tests.support.services import ID_HASH_KEY, ServerProcess, free_port

EXE = str(Path(sys.executable).parent / "homepocket-relay")
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("DATABASE_URL", "REDIS_URL", "S3_BUCKET", "S3_ENDPOINT_URL", "ID_HASH_KEY")
}


def photo_round_trip(url: str) -> None:
    device = DeviceKey(book_id="serve-test-book-0001")
    data = os.urandom(70_000)
    with httpx.Client(base_url=url, timeout=10) as c:
        body = {"public_key": device.public_b64, "book_id": device.book_id}
        assert c.post("/api/v1/devices", json=body, headers=device.auth()).status_code == 201
        upload = c.post(
            "/api/v1/photos/upload",
            json={"book_id": device.book_id, "size_bytes": len(data)},
            headers=device.auth(),
        ).json()["data"]
        stored = c.put(upload["upload_url"], content=data, headers=upload["upload_headers"])
        assert stored.status_code == 200
        photo_id = upload["photo_id"]
        done = c.post(f"/api/v1/photos/{photo_id}/complete", headers=device.auth())
        assert done.status_code == 200
        got = c.get(f"/api/v1/photos/{photo_id}", headers=device.auth()).json()["data"]
        assert c.get(got["download_url"]).content == data


def test_serve_embedded_photo_round_trip(tmp_path: Path) -> None:
    server = ServerProcess(CLEAN_ENV, tmp_path / "data").start()
    try:
        photo_round_trip(server.url)
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()
    assert '"route":"/blobs/{key:path}"' in server.log()  # the template, never the key
    assert "serve-test-book-0001" not in server.log()


def test_serve_on_s3(tmp_path: Path, s3_endpoint: str) -> None:
    env = {
        **CLEAN_ENV,
        "S3_BUCKET": S3_TEST_BUCKET,
        "S3_ENDPOINT_URL": s3_endpoint,
        "AWS_REGION": "us-east-1",
        "ID_HASH_KEY": ID_HASH_KEY,
    }
    server = ServerProcess(env, tmp_path / "data").start()
    try:
        photo_round_trip(server.url)
        ready = httpx.get(server.url + "/ready", timeout=10).json()["data"]
        assert "s3" in ready["backends"]
    finally:
        assert server.stop() == 0


def test_unreachable_bucket_is_one_clear_line(tmp_path: Path) -> None:
    env = {
        **CLEAN_ENV,
        "S3_BUCKET": "no-such-bucket",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "ID_HASH_KEY": ID_HASH_KEY,
    }
    done = subprocess.run(
        [EXE, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 2
    # Refused at once, or (botocore's retries back off at random, and a loaded machine
    # is slow) cut off by BACKEND_TIMEOUT_S: either way one line naming the bucket.
    line = "homepocket-relay: configuration error: S3_BUCKET: bucket not reachable"
    assert done.stderr.strip().splitlines() in (
        [line + " (EndpointConnectionError)"],
        [line + " (Timeout)"],
    )
