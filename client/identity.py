"""A device's identity: its Ed25519 key on disk, its device_id, and the tokens it signs.

Never sends or logs the private key; the key file is created owner-only (0600).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

from nacl.signing import SigningKey

DEFAULT_TOKEN_LIFETIME_S = 600


def b64url(raw: bytes) -> str:
    """Canonical unpadded base64url, as docs/CONTRACT.md §2 requires of every token part."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64(raw: bytes) -> str:
    """Standard padded base64 (RFC 4648 section 4): keys and payloads on the wire."""
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def device_id_of(public_key: bytes) -> str:
    """Self-certifying id: the first 16 bytes of SHA-256(raw public key), in hex."""
    return hashlib.sha256(public_key).digest()[:16].hex()


class Identity:
    """One device key. An app keeping several books uses one identity per book."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Read the 32-byte seed from `path`, or make a new key and keep it there (0600)."""
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise ValueError(f"{path} does not hold a 32-byte Ed25519 seed")
            return cls(SigningKey(seed))
        identity = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never overwrite a key another process just wrote; 0600 from the start,
        # so there is no moment where the seed is readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(bytes(identity._key))
        return identity

    @property
    def signing_key(self) -> SigningKey:
        return self._key

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    @property
    def public_key_b64(self) -> str:
        return b64(self.public_key)

    @property
    def device_id(self) -> str:
        return device_id_of(self.public_key)

    def token(
        self,
        book_id: str | None,
        lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S,
        now: float | None = None,
    ) -> str:
        """A compact JWS: header {alg: EdDSA}, claims sub/iat/exp/book_id, signed here.

        Short-lived on purpose: a leaked token is worth minutes, and minting one costs
        a signature. No `kid`/`jwk`: the server always uses the key registered for sub.
        """
        issued = int(time.time() if now is None else now)
        header = {"alg": "EdDSA", "typ": "JWT"}
        claims = {
            "sub": self.device_id,
            "iat": issued,
            "exp": issued + lifetime_s,
            "book_id": book_id,
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input.encode()).signature
        return signing_input + "." + b64url(signature)

    def __repr__(self) -> str:  # never the seed
        return f"Identity(device_id={self.device_id})"
