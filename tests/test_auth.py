"""Every token rejection rule of docs/CONTRACT.md §2, over real HTTP on both backends."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.support.keys import DeviceKey, b64url, hs256_with_public_key, unsigned


async def member(client: httpx.AsyncClient) -> tuple[DeviceKey, str]:
    device = DeviceKey()
    book_id = str(uuid.uuid4())
    device.book_id = book_id
    response = await client.post(
        "/api/v1/devices",
        json={"public_key": device.public_b64, "book_id": book_id},
        headers=device.auth(),
    )
    assert response.status_code == 201, response.text
    return device, book_id


async def get_devices(client: httpx.AsyncClient, book_id: str, token: str) -> httpx.Response:
    return await client.get(
        f"/api/v1/books/{book_id}/devices", headers={"Authorization": f"Bearer {token}"}
    )


def refusal(response: httpx.Response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["details"].get("reason")


async def test_valid_token_is_accepted_with_either_alg_name(client: httpx.AsyncClient) -> None:
    device, book_id = await member(client)
    for alg in ("EdDSA", "Ed25519"):
        response = await get_devices(client, book_id, device.token(alg=alg))
        assert response.status_code == 200, (alg, response.text)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("alg none", lambda d: unsigned(d), "invalid"),
        ("HS256 keyed with the public key", lambda d: hs256_with_public_key(d), "invalid"),
        ("expired", lambda d: d.token(iat=time.time() - 700, exp=time.time() - 100), "expired"),
        ("iat in the future", lambda d: d.token(iat=time.time() + 120), "clock_skew"),
        ("lifetime over 24 h", lambda d: d.token(exp=time.time() + 25 * 3600), "lifetime"),
        ("unknown alg name", lambda d: d.token(alg="ES256"), "invalid"),
        ("embedded jwk", lambda d: d.token(header={"jwk": {"kty": "OKP"}}), "invalid"),
        ("jku header", lambda d: d.token(header={"jku": "https://evil.example/k"}), "invalid"),
        ("x5c header", lambda d: d.token(header={"x5c": ["MIIB"]}), "invalid"),
        ("garbage", lambda d: "not.a.token", "invalid"),
        ("two parts", lambda d: d.token().rsplit(".", 1)[0], "invalid"),
    ],
)
async def test_token_refused(
    client: httpx.AsyncClient, name: str, make: object, reason: str
) -> None:
    device, book_id = await member(client)
    token = make(device)  # type: ignore[operator]
    status, code, why = refusal(await get_devices(client, book_id, token))
    assert (status, code, why) == (401, "INVALID_TOKEN", reason), name


async def test_bad_signature(client: httpx.AsyncClient) -> None:
    device, book_id = await member(client)
    head, body, sig = device.token().split(".")
    flipped = b64url(bytes(64))
    assert refusal(await get_devices(client, book_id, f"{head}.{body}.{flipped}"))[:3] == (
        401,
        "INVALID_TOKEN",
        "invalid",
    )
    # Claims edited after signing.
    other = device.token(book_id="x" * 20).split(".")[1]
    assert refusal(await get_devices(client, book_id, f"{head}.{other}.{sig}"))[0] == 401


async def test_padded_or_noncanonical_base64url_refused(client: httpx.AsyncClient) -> None:
    device, book_id = await member(client)
    head, body, sig = device.token().split(".")
    padded = head + "=" * (-len(head) % 4) if len(head) % 4 else head + "=="
    assert refusal(await get_devices(client, book_id, f"{padded}.{body}.{sig}"))[0] == 401


async def test_unknown_device(client: httpx.AsyncClient) -> None:
    _, book_id = await member(client)
    stranger = DeviceKey(book_id=book_id)
    assert refusal(await get_devices(client, book_id, stranger.token())) == (
        401,
        "INVALID_TOKEN",
        "unknown_device",
    )


async def test_token_for_another_book_is_403(client: httpx.AsyncClient) -> None:
    device, book_id = await member(client)
    _, other_book = await member(client)
    # Token claims the other book, path names the other book: not a member there.
    assert refusal(await get_devices(client, other_book, device.token(other_book)))[:2] == (
        403,
        "FORBIDDEN",
    )
    # Token claims the device's own book, but the path names another: mismatch.
    assert refusal(await get_devices(client, other_book, device.token(book_id)))[:2] == (
        403,
        "FORBIDDEN",
    )


async def test_missing_or_wrong_scheme(client: httpx.AsyncClient) -> None:
    _, book_id = await member(client)
    for headers in ({}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer"}):
        response = await client.get(f"/api/v1/books/{book_id}/devices", headers=headers)
        assert refusal(response)[:2] == (401, "INVALID_TOKEN")


async def test_revoked_device_refused_at_once_and_cannot_register_again(
    client: httpx.AsyncClient,
) -> None:
    owner, book_id = await member(client)
    revoke = await client.delete(
        f"/api/v1/books/{book_id}/devices/{owner.device_id}", headers=owner.auth()
    )
    assert revoke.status_code == 204
    # The revoked owner's valid token is refused at once, with 403 revoked.
    again = await get_devices(client, book_id, owner.token())
    assert refusal(again) == (403, "FORBIDDEN", "revoked")
    register = await client.post(
        "/api/v1/devices",
        json={"public_key": owner.public_b64, "book_id": str(uuid.uuid4())},
        headers=owner.auth(None),
    )
    assert refusal(register) == (403, "FORBIDDEN", "revoked")


async def test_revoking_the_last_member_erases_the_book(client: httpx.AsyncClient) -> None:
    owner, book_id = await member(client)
    response = await client.delete(
        f"/api/v1/books/{book_id}/devices/{owner.device_id}", headers=owner.auth()
    )
    assert response.status_code == 204
    newcomer = DeviceKey(book_id=book_id)
    again = await client.post(
        "/api/v1/devices",
        json={"public_key": newcomer.public_b64, "book_id": book_id},
        headers=newcomer.auth(),
    )
    assert again.status_code == 201, again.text


async def test_revoking_a_device_not_in_the_book_is_404(client: httpx.AsyncClient) -> None:
    owner, book_id = await member(client)
    outsider, _ = await member(client)
    for target in (outsider.device_id, "0" * 32, "not-a-device"):
        response = await client.delete(
            f"/api/v1/books/{book_id}/devices/{target}", headers=owner.auth()
        )
        assert refusal(response)[:2] == (404, "DEVICE_NOT_FOUND")
