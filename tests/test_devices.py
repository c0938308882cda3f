"""POST /devices and the device list (docs/CONTRACT.md §3), on both backends over real HTTP."""

from __future__ import annotations

import uuid

import httpx

from infra.ids import device_id_of
from tests.support.keys import DeviceKey


def new_book_id() -> str:
    return str(uuid.uuid4())


async def register(
    client: httpx.AsyncClient,
    device: DeviceKey,
    book_id: str | None = None,
) -> httpx.Response:
    body: dict[str, object] = {"public_key": device.public_b64}
    if book_id is not None:
        body["book_id"] = book_id
        device.book_id = book_id
    return await client.post("/api/v1/devices", json=body, headers=device.auth(book_id))


async def test_register_creates_book_then_repeat_is_200(client: httpx.AsyncClient) -> None:
    device = DeviceKey()
    book_id = new_book_id()
    first = await register(client, device, book_id)
    assert first.status_code == 201, first.text
    data = first.json()["data"]
    assert data["device_id"] == device_id_of(device.public_raw) == device.device_id
    assert data["book_id"] == book_id
    assert data["created_at"].endswith("Z")
    again = await register(client, device, book_id)
    assert again.status_code == 200
    assert again.json()["data"] == data


async def test_book_squatting_is_409(client: httpx.AsyncClient) -> None:
    book_id = new_book_id()
    assert (await register(client, DeviceKey(), book_id)).status_code == 201
    other = await register(client, DeviceKey(), book_id)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "BOOK_EXISTS"


async def test_device_in_a_book_naming_another_is_409(client: httpx.AsyncClient) -> None:
    device = DeviceKey()
    assert (await register(client, device, new_book_id())).status_code == 201
    response = await register(client, device, new_book_id())
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "DEVICE_EXISTS"


async def test_device_without_book_may_create_one_later(client: httpx.AsyncClient) -> None:
    device = DeviceKey()
    first = await client.post(
        "/api/v1/devices", json={"public_key": device.public_b64}, headers=device.auth(None)
    )
    assert first.status_code == 201
    assert first.json()["data"]["book_id"] is None
    book_id = new_book_id()
    assert (await register(client, device, book_id)).status_code == 201
    listed = await client.get(f"/api/v1/books/{book_id}/devices", headers=device.auth(book_id))
    assert listed.status_code == 200
    assert [d["device_id"] for d in listed.json()["data"]["devices"]] == [device.device_id]


async def test_token_signed_by_another_key_cannot_register(client: httpx.AsyncClient) -> None:
    owner, thief = DeviceKey(), DeviceKey()
    token = thief.token(None, sub=owner.device_id)
    response = await client.post(
        "/api/v1/devices",
        json={"public_key": owner.public_b64},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["details"]["reason"] == "invalid"


async def test_device_list_shape(client: httpx.AsyncClient) -> None:
    device = DeviceKey()
    book_id = new_book_id()
    await register(client, device, book_id)
    response = await client.get(f"/api/v1/books/{book_id}/devices", headers=device.auth())
    body = response.json()
    assert response.status_code == 200
    assert body["success"] is True
    assert body["data"]["total_count"] == 1
    (entry,) = body["data"]["devices"]
    assert set(entry) == {"device_id", "public_key", "last_active_at", "is_current", "online"}
    assert entry["is_current"] is True
    assert entry["public_key"] == device.public_b64
    assert response.headers["API-Version"] == "1.0"
    assert response.headers["X-Request-ID"] == body["meta"]["request_id"]
