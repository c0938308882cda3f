"""Device-signed EdDSA tokens (docs/CONTRACT.md §2): parse strictly, verify against a known key.

Pure: no I/O, the time is passed in. Every refusal is `401 INVALID_TOKEN` with a
`details.reason` of invalid, expired, clock_skew or lifetime.

A token is parsed once, here, strictly (canonical base64url, EdDSA only, no key in the
header), and its signature checked by libsodium (PyNaCl) over the exact bytes signed.
A handshake is mostly this check: through PyJWT it cost 450 us (the token decoded a
second time, then OpenSSL's Ed25519), now about 200. The tests mint their tokens with
PyJWT, an independent implementation of the format.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from infra.errors import ApiError, invalid_token

# "EdDSA" and "Ed25519" name the same signature (some clients send Ed25519).
# Nothing else is accepted, so no `none`, HS* or RS*: no algorithm confusion.
ALGORITHMS = ("EdDSA", "Ed25519")

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_KEY_HEADERS = ("jwk", "jku", "x5u", "x5c")
MAX_TOKEN_CHARS = 4096
MAX_CLOCK_SKEW_S = 60


@dataclass(frozen=True)
class Claims:
    sub: str
    iat: int
    exp: int
    book_id: str | None


def _b64url(part: str) -> bytes:
    """Canonical unpadded base64url, or the token is invalid."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise invalid_token("invalid")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise invalid_token("invalid") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != part:
        raise invalid_token("invalid")
    return raw


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_token("invalid") from None
    if not isinstance(value, dict):
        raise invalid_token("invalid")
    return value


def _int_claim(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_token("invalid")
    return int(value)


@dataclass(frozen=True)
class Unverified:
    """A token parsed, its signature not yet checked: nothing in it is to be trusted."""

    claims: Claims
    signed: bytes  # b64url(header) "." b64url(claims): the bytes the signature covers
    signature: bytes


def read_unverified(token: str) -> Claims:
    """Shape and header checks, and the claims, before the key is known.

    The claims are not to be trusted until `verify` has checked the signature.
    """
    return parse(token).claims


def parse(token: str) -> Unverified:
    """`read_unverified`, keeping what `check` needs, so a token is parsed once."""
    if len(token) > MAX_TOKEN_CHARS:
        raise invalid_token("invalid")
    parts = token.split(".")
    if len(parts) != 3:
        raise invalid_token("invalid")
    header = _json_object(_b64url(parts[0]))
    claims = _json_object(_b64url(parts[1]))
    signature = _b64url(parts[2])
    if header.get("alg") not in ALGORITHMS or any(h in header for h in _KEY_HEADERS):
        raise invalid_token("invalid")
    if "crit" in header:  # no extension is understood, so none may be critical
        raise invalid_token("invalid")
    sub = claims.get("sub")
    book_id = claims.get("book_id")
    if not isinstance(sub, str) or not (book_id is None or isinstance(book_id, str)):
        raise invalid_token("invalid")
    verified = Claims(
        sub=sub, iat=_int_claim(claims, "iat"), exp=_int_claim(claims, "exp"), book_id=book_id
    )
    signed = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
    return Unverified(verified, signed, signature)


def verify(token: str, public_key: bytes, now: float, max_lifetime_s: int) -> Claims:
    """Signature against the registered key, then the times (docs/CONTRACT.md §2)."""
    return check(parse(token), public_key, now, max_lifetime_s)


def check(token: Unverified, public_key: bytes, now: float, max_lifetime_s: int) -> Claims:
    """`verify` for a token already parsed."""
    try:
        VerifyKey(public_key).verify(token.signed, token.signature)
    except (CryptoError, ValueError, TypeError):  # a bad signature, key or length
        raise invalid_token("invalid") from None
    check_times(token.claims, now, max_lifetime_s)
    return token.claims


def check_times(claims: Claims, now: float, max_lifetime_s: int) -> None:
    if claims.exp <= now:
        raise invalid_token("expired")
    if claims.iat > now + MAX_CLOCK_SKEW_S:
        raise invalid_token("clock_skew")
    if claims.exp - claims.iat > max_lifetime_s:
        raise invalid_token("lifetime")


def bearer(header: str | None) -> str:
    if not header:
        raise ApiError("INVALID_TOKEN", "A bearer token is required.", {"reason": "invalid"})
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise invalid_token("invalid")
    return token.strip()
