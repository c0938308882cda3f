"""The docs/CONTRACT.md §3 HTTP API, one method per endpoint, over httpx.

Sends only ciphertext and public keys; raises `RelayError` carrying the contract's
error code. Never logs a token or a body.
"""

from __future__ import annotations

from typing import Any

import httpx

from client.identity import Identity, b64

PREFIX = "/api/v1"


class RelayError(Exception):
    """An error envelope from the server: `status`, `code`, `details`."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class Api:
    """Authenticated calls for one device. `book_id` is the claim its tokens carry."""

    def __init__(
        self,
        base_url: str,
        identity: Identity,
        book_id: str | None = None,
        *,
        token_lifetime_s: int = 300,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.book_id = book_id
        self.token_lifetime_s = token_lifetime_s
        self.http = httpx.AsyncClient(timeout=15, transport=transport)
        self.blob_bytes_received = 0  # photos and snapshots downloaded

    async def aclose(self) -> None:
        await self.http.aclose()

    def token(self) -> str:
        return self.identity.token(self.book_id, self.token_lifetime_s)

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One call; a 401 is answered once with a fresh token (contract §2), then raised."""
        for attempt in (0, 1):
            response = await self.http.request(
                method,
                self.base_url + PREFIX + path,
                json=body,
                params=params,
                headers={"Authorization": "Bearer " + self.token()},
            )
            if response.status_code == 401 and attempt == 0:
                continue
            return _unwrap(response)
        raise AssertionError("unreachable")

    # --- devices and books ---------------------------------------------------------

    async def register(self, book_id: str | None = None) -> dict[str, Any]:
        """POST /devices: with a book_id, creates that book with this device in it."""
        body: dict[str, Any] = {"public_key": self.identity.public_key_b64}
        if book_id is not None:
            body["book_id"] = book_id
            self.book_id = book_id
        result: dict[str, Any] = await self.call("POST", "/devices", body)
        return result

    async def devices(self) -> dict[str, Any]:
        return dict(await self.call("GET", f"/books/{self._book()}/devices"))

    async def revoke(self, device_id: str) -> None:
        await self.call("DELETE", f"/books/{self._book()}/devices/{device_id}")

    async def sync_status(self) -> dict[str, Any]:
        return dict(await self.call("GET", f"/books/{self._book()}/sync_status"))

    async def erase_book(self) -> None:
        await self.call("DELETE", f"/books/{self._book()}")

    # --- relay over HTTP -------------------------------------------------------------

    async def send_op(self, payload: bytes, timestamp: int, op_id: str | None = None) -> Any:
        body: dict[str, Any] = {
            "book_id": self._book(),
            "payload": b64(payload),
            "timestamp": timestamp,
        }
        if op_id is not None:
            body["id"] = op_id
        return await self.call("POST", "/relay/send", body)

    async def ops(self, since: int = 0, epoch: str | None = None, limit: int = 1000) -> Any:
        params: dict[str, Any] = {"since": since, "limit": limit}
        if epoch is not None:
            params["epoch"] = epoch
        return await self.call("GET", f"/books/{self._book()}/ops", params=params)

    # --- pairing (contract §5) -----------------------------------------------------------

    async def pairing_generate(self) -> dict[str, Any]:
        return dict(await self.call("POST", "/pairing/generate", {"book_id": self._book()}))

    async def pairing_verify(self, short_code: str) -> dict[str, Any]:
        body = {"short_code": short_code, "public_key": self.identity.public_key_b64}
        return dict(await self.call("POST", "/pairing/verify", body))

    async def pairing_exchange(self, pairing_id: str, payload: bytes | None = None) -> Any:
        body: dict[str, Any] = {"pairing_id": pairing_id}
        if payload is not None:
            body["payload"] = b64(payload)
        return await self.call("POST", "/pairing/exchange", body)

    async def pairing_confirm(self, pairing_id: str, accept: bool) -> Any:
        return await self.call(
            "POST", "/pairing/confirm", {"pairing_id": pairing_id, "accept": accept}
        )

    # --- photos and snapshots: metadata here, bytes straight to the blob URL ----------

    async def photo_upload(self, size_bytes: int) -> dict[str, Any]:
        body = {"book_id": self._book(), "size_bytes": size_bytes}
        return dict(await self.call("POST", "/photos/upload", body))

    async def photo_complete(self, photo_id: str) -> dict[str, Any]:
        return dict(await self.call("POST", f"/photos/{photo_id}/complete"))

    async def photo_get(self, photo_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/photos/{photo_id}"))

    async def photo_delete(self, photo_id: str) -> None:
        await self.call("DELETE", f"/photos/{photo_id}")

    async def snapshot_create(self, epoch: str, covers_seq: int, size_bytes: int) -> Any:
        body = {"epoch": epoch, "covers_seq": covers_seq, "size_bytes": size_bytes}
        return await self.call("POST", f"/books/{self._book()}/snapshots", body)

    async def snapshot_complete(self, snapshot_id: str) -> Any:
        return await self.call("POST", f"/books/{self._book()}/snapshots/{snapshot_id}/complete")

    async def snapshot_latest(self) -> dict[str, Any]:
        return dict(await self.call("GET", f"/books/{self._book()}/snapshots/latest"))

    async def put_blob(self, url: str, headers: dict[str, str], data: bytes) -> None:
        """PUT exactly the declared bytes with exactly `upload_headers` (docs/CONTRACT.md §3)."""
        response = await self.http.put(url, content=data, headers=headers)
        if response.status_code not in (200, 201, 204):
            raise RelayError(response.status_code, "UPLOAD_FAILED", "blob store refused", {})

    async def get_blob(self, url: str) -> bytes:
        response = await self.http.get(url)
        if response.status_code != 200:
            raise RelayError(response.status_code, "DOWNLOAD_FAILED", "blob store refused", {})
        self.blob_bytes_received += len(response.content)
        return response.content

    def _book(self) -> str:
        if self.book_id is None:
            raise RuntimeError("this device is in no book yet")
        return self.book_id


def _unwrap(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    try:
        body = response.json()
    except ValueError:
        raise RelayError(response.status_code, "BAD_RESPONSE", "not JSON", {}) from None
    if isinstance(body, dict) and body.get("success") is True:
        return body.get("data")
    error = body.get("error", {}) if isinstance(body, dict) else {}
    raise RelayError(
        response.status_code,
        str(error.get("code", "UNKNOWN")),
        str(error.get("message", "")),
        dict(error.get("details") or {}),
    )
