"""The client's HTTP calls against the real server, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.api import RelayError
from client.device import Device
from tests.support.services import InProcessServer


async def test_create_book_and_list_devices(server: InProcessServer, tmp_path: Path) -> None:
    phone = Device.open(tmp_path / "phone", server.url, "phone")
    try:
        book_id = await phone.create_book()
        assert len(phone.book_key) == 32
        again = await phone.api.register(book_id)  # idempotent registration
        assert again["device_id"] == phone.device_id and again["book_id"] == book_id
        listed = await phone.api.devices()
        assert [d["device_id"] for d in listed["devices"]] == [phone.device_id]
        assert listed["devices"][0]["public_key"] == phone.identity.public_key_b64
        reopened = Device.open(tmp_path / "phone", server.url, "phone")  # state survives
        assert (reopened.book_id, reopened.book_key) == (book_id, phone.book_key)
        await reopened.close()
    finally:
        await phone.close()


async def test_errors_carry_the_contract_code(server: InProcessServer, tmp_path: Path) -> None:
    first = Device.open(tmp_path / "first", server.url)
    squatter = Device.open(tmp_path / "squatter", server.url)
    try:
        book_id = await first.create_book()
        with pytest.raises(RelayError) as refused:
            await squatter.api.register(book_id)
        assert (refused.value.status, refused.value.code) == (409, "BOOK_EXISTS")
    finally:
        await first.close()
        await squatter.close()
