"""Test devices: an Ed25519 key, its device_id, and tokens signed with it."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from infra.ids import device_id_of


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class DeviceKey:
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    book_id: str | None = None

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    @property
    def device_id(self) -> str:
        return device_id_of(self.public_raw)

    def token(
        self,
        book_id: str | object | None = ...,
        *,
        iat: float | None = None,
        exp: float | None = None,
        alg: str = "EdDSA",
        sub: str | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = time.time()
        body: dict[str, Any] = {
            "sub": sub or self.device_id,
            "iat": int(now if iat is None else iat),
            "exp": int(now + 600 if exp is None else exp),
            "book_id": self.book_id if book_id is ... else book_id,
            **claims,
        }
        hdr = {"alg": alg, "typ": "JWT", **(header or {})}
        signing_input = b64url(orjson.dumps(hdr)) + "." + b64url(orjson.dumps(body))
        signature = self.private.sign(signing_input.encode())
        return signing_input + "." + b64url(signature)

    def auth(self, book_id: str | object | None = ..., **kw: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(book_id, **kw)}


def hs256_with_public_key(device: DeviceKey) -> str:
    """Algorithm confusion: an HMAC token keyed with the public key."""
    now = int(time.time())
    claims = {"sub": device.device_id, "iat": now, "exp": now + 600, "book_id": device.book_id}
    return str(jwt.encode(claims, device.public_raw, algorithm="HS256"))


def unsigned(device: DeviceKey) -> str:
    now = int(time.time())
    hdr = b64url(orjson.dumps({"alg": "none", "typ": "JWT"}))
    body = b64url(orjson.dumps({"sub": device.device_id, "iat": now, "exp": now + 600}))
    return f"{hdr}.{body}."
