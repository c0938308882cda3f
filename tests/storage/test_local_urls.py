"""The local folder's signed blob URLs: tampering refused, streamed to disk, CORS like the API."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from tests.conftest import make_settings
from tests.storage.support import code, complete, member, put, reserve, storage_server

ORIGIN = "https://app.example"


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_tampered_urls_are_refused(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s = make_settings("embedded", tmp_path, request)
    async with storage_server(s) as (_, client, _rt):
        device = await member(client)
        upload = (await reserve(client, device, 4)).json()["data"]
        other = (await reserve(client, device, 4)).json()["data"]
        url = upload["upload_url"]
        signature = dict(parse_qsl(urlsplit(url).query))["signature"]
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        expires = int(dict(parse_qsl(urlsplit(url).query))["expires"])
        forged = [
            with_query(url, signature=flipped),
            with_query(url, length="400"),  # a bigger length than signed
            with_query(url, expires=str(expires + 3600)),  # a longer life than signed
            url.replace(upload["photo_id"], other["photo_id"]),  # another object
            with_query(url, signature=""),
            url.split("?")[0],
        ]
        for bad in forged:
            response = await client.put(bad, content=b"abcd", headers={"Content-Length": "4"})
            assert response.status_code == 403, bad
            assert response.json()["error"] == {
                "code": "FORBIDDEN",
                "message": "This blob URL is not valid.",
                "details": {"reason": "signature"},
            }
        # A PUT URL is no GET URL.
        assert (await client.get(url)).status_code == 403
        assert code(await complete(client, device, upload["photo_id"])) == "UPLOAD_INCOMPLETE"
        assert (await put(client, upload, b"abcd")).status_code == 200
        assert (await complete(client, device, upload["photo_id"])).status_code == 200
        got = await client.get(f"/api/v1/photos/{upload['photo_id']}", headers=device.auth())
        download = got.json()["data"]["download_url"]
        assert (await client.get(download)).content == b"abcd"
        tampered = download.replace(upload["photo_id"], other["photo_id"])
        assert (await client.get(tampered)).status_code == 403
        # A GET URL cannot be turned into a PUT.
        put_with_get_url = await client.put(
            download, content=b"evil", headers={"Content-Length": "4"}
        )
        assert put_with_get_url.status_code == 403


async def test_put_streams_exactly_the_signed_length(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = make_settings("embedded", tmp_path, request)
    async with storage_server(s) as (_, client, _rt):
        device = await member(client)
        size = 3 * 1024 * 1024 + 7
        upload = (await reserve(client, device, size)).json()["data"]
        data = os.urandom(size)

        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, size, 100_000):
                yield data[i : i + 100_000]

        streamed = await client.put(
            upload["upload_url"], content=chunks(), headers=upload["upload_headers"]
        )
        assert streamed.status_code == 200
        folder = s.data_dir / "blobs" / upload["s3_key"]
        assert folder.read_bytes() == data
        assert not [p for p in folder.parent.iterdir() if p.name.endswith(".part")]
        # Chunked without a Content-Length: refused, nothing stored.
        second = (await reserve(client, device, 10)).json()["data"]

        async def ten():  # type: ignore[no-untyped-def]
            yield b"0123456789"

        chunked = await client.put(second["upload_url"], content=ten())
        assert chunked.status_code == 400
        assert chunked.json()["error"]["details"] == {"field": "Content-Length"}
        assert code(await complete(client, device, second["photo_id"])) == "UPLOAD_INCOMPLETE"
        # More than signed: 413 before a byte is written.
        over = await client.put(
            second["upload_url"], content=b"x" * 11, headers={"Content-Length": "11"}
        )
        assert over.status_code == 413 and code(over) == "PAYLOAD_TOO_LARGE"
        assert not (s.data_dir / "blobs" / second["s3_key"]).exists()


async def test_blob_urls_answer_cors_like_the_api(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s = make_settings("embedded", tmp_path, request, allowed_origins=(ORIGIN,))
    async with storage_server(s) as (_, client, _rt):
        device = await member(client)
        upload = (await reserve(client, device, 3)).json()["data"]
        preflight = await client.options(
            upload["upload_url"],
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
        api_preflight = await client.options(
            "/api/v1/photos/upload",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        assert api_preflight.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
        stored = await client.put(
            upload["upload_url"],
            content=b"abc",
            headers={**upload["upload_headers"], "Origin": ORIGIN},
        )
        assert stored.status_code == 200
        assert stored.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert stored.headers["Vary"] == "Origin"
        refused = await client.put(
            upload["upload_url"] + "0", content=b"abc", headers={"Origin": ORIGIN}
        )
        assert refused.status_code == 403
        assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
        await complete(client, device, upload["photo_id"])
        got = await client.get(f"/api/v1/photos/{upload['photo_id']}", headers=device.auth())
        blob = await client.get(got.json()["data"]["download_url"], headers={"Origin": ORIGIN})
        assert blob.content == b"abc"
        assert blob.headers["Access-Control-Allow-Origin"] == ORIGIN
        stranger = await client.get(
            got.json()["data"]["download_url"], headers={"Origin": "https://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in stranger.headers
