"""The client side of docs/CONTRACT.md §5: commitment, nonces, the short authentication string (SAS)
and the book key sealed from G to J. Pure functions over bytes, no I/O.

For clients only: the server never imports this module (it must never see a nonce
before the users compare, nor a book key at all). G generated the code, J joined;
`pk_G`, `pk_J` are the raw 32-byte Ed25519 public keys each side received.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from nacl.bindings import (
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_seed_keypair,
)
from nacl.public import Box, PrivateKey, PublicKey

TAG_COMMIT = 0x01
TAG_NONCE = 0x02
TAG_REVEAL = 0x03
TAG_BOOK_KEY = 0x04
NONCE_BYTES = 32
BOX_NONCE_BYTES = 24
_BODY_SIZES = {TAG_COMMIT: 32, TAG_NONCE: NONCE_BYTES, TAG_REVEAL: NONCE_BYTES}


class PairingAbort(Exception):
    """The peer's message breaks the protocol: stop and show no SAS."""


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def commitment(pk_g: bytes, n_g: bytes) -> bytes:
    """SHA-256("hp-sas-commit-v1" ‖ pk_G ‖ n_G): binds G to n_G before it sees n_J."""
    _check(pk_g, 32, "pk_G")
    _check(n_g, NONCE_BYTES, "n_G")
    return hashlib.sha256(b"hp-sas-commit-v1" + pk_g + n_g).digest()


def sas(pk_g: bytes, pk_j: bytes, n_g: bytes, n_j: bytes) -> str:
    """Six digits: big-endian uint32 of SHA-256("hp-sas-v1" ‖ pk_G ‖ pk_J ‖ n_G ‖ n_J)[:4]
    mod 10^6, with leading zeros. Both users must see the same digits."""
    for value, size, name in ((pk_g, 32, "pk_G"), (pk_j, 32, "pk_J")):
        _check(value, size, name)
    _check(n_g, NONCE_BYTES, "n_G")
    _check(n_j, NONCE_BYTES, "n_J")
    digest = hashlib.sha256(b"hp-sas-v1" + pk_g + pk_j + n_g + n_j).digest()
    return f"{int.from_bytes(digest[:4], 'big') % 1_000_000:06d}"


def commit_message(pk_g: bytes, n_g: bytes) -> bytes:
    """Step 1 (G): 0x01 ‖ commitment."""
    return bytes([TAG_COMMIT]) + commitment(pk_g, n_g)


def nonce_message(n_j: bytes) -> bytes:
    """Step 2 (J): 0x02 ‖ n_J."""
    _check(n_j, NONCE_BYTES, "n_J")
    return bytes([TAG_NONCE]) + n_j


def reveal_message(n_g: bytes) -> bytes:
    """Step 3 (G): 0x03 ‖ n_G."""
    _check(n_g, NONCE_BYTES, "n_G")
    return bytes([TAG_REVEAL]) + n_g


def parse(message: bytes) -> tuple[int, bytes]:
    """(tag, body) of a deposited message, sizes checked; PairingAbort otherwise."""
    if not message:
        raise PairingAbort("empty message")
    tag, body = message[0], message[1:]
    if tag in _BODY_SIZES and len(body) != _BODY_SIZES[tag]:
        raise PairingAbort(f"message 0x{tag:02x} has the wrong length")
    if tag == TAG_BOOK_KEY and len(body) <= BOX_NONCE_BYTES + 16:
        raise PairingAbort("book-key message too short")
    if tag not in _BODY_SIZES and tag != TAG_BOOK_KEY:
        raise PairingAbort(f"unknown message 0x{tag:02x}")
    return tag, body


def check_reveal(commit: bytes, pk_g: bytes, n_g: bytes) -> None:
    """Step 3 (J): the revealed n_G must match G's commitment, else abort."""
    if not hmac.compare_digest(commitment(pk_g, n_g), commit):
        raise PairingAbort("revealed nonce does not match the commitment")


def _x25519_secret(ed25519_seed: bytes) -> PrivateKey:
    _check(ed25519_seed, 32, "Ed25519 seed")
    _, secret64 = crypto_sign_seed_keypair(ed25519_seed)
    return PrivateKey(crypto_sign_ed25519_sk_to_curve25519(secret64))


def _x25519_public(ed25519_public: bytes) -> PublicKey:
    _check(ed25519_public, 32, "Ed25519 public key")
    return PublicKey(crypto_sign_ed25519_pk_to_curve25519(ed25519_public))


def seal_book_key(
    book_key: bytes, g_seed: bytes, pk_j: bytes, box_nonce: bytes | None = None
) -> bytes:
    """Step 5 (G): 0x04 ‖ nonce(24) ‖ crypto_box(book_key), from G's X25519 key to J's
    (both converted from Ed25519), so J knows the key came from G and not the server.
    `box_nonce` is for test vectors only; leave it None."""
    nonce = box_nonce if box_nonce is not None else secrets.token_bytes(BOX_NONCE_BYTES)
    _check(nonce, BOX_NONCE_BYTES, "box nonce")
    sealed = Box(_x25519_secret(g_seed), _x25519_public(pk_j)).encrypt(book_key, nonce)
    return bytes([TAG_BOOK_KEY]) + bytes(sealed)  # nonce ‖ MAC ‖ ciphertext


def open_book_key(message: bytes, j_seed: bytes, pk_g: bytes) -> bytes:
    """Step 5 (J): open G's box; nacl.exceptions.CryptoError when it was not G's
    box to J (for instance, a server swapped the keys)."""
    tag, body = parse(message)
    if tag != TAG_BOOK_KEY:
        raise PairingAbort("not a book-key message")
    return bytes(Box(_x25519_secret(j_seed), _x25519_public(pk_g)).decrypt(body))


def _check(value: bytes, size: int, name: str) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")
