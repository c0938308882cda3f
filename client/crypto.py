"""End-to-end encryption: every op, photo and snapshot is sealed with the book key here.

The relay gets only what this module returns. Never reuses a nonce (each is 24 fresh
random bytes, safe at XChaCha20's size) and never returns plaintext that failed its tag.

Ciphertext layout, for every kind of blob:
    version (1 byte, 0x01) ‖ nonce (24 bytes) ‖ XChaCha20-Poly1305(book_key, nonce, plaintext, aad)
The associated data binds a ciphertext to where it belongs, so a server that moves one
(an op into another book, a photo under another photo_id) makes it fail to open:
    op:       b"hp-op-v1:"       ‖ book_id
    photo:    b"hp-photo-v1:"    ‖ book_id ‖ b":" ‖ photo_id
    snapshot: b"hp-snapshot-v1:" ‖ book_id ‖ b":" ‖ snapshot_id
"""

from __future__ import annotations

import os

from nacl import bindings
from nacl.exceptions import CryptoError

VERSION = 0x01
KEY_BYTES = bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
NONCE_BYTES = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_BYTES = bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES  # 41 bytes per blob


class DecryptError(Exception):
    """Wrong key, wrong place (associated data) or a tampered ciphertext."""


def new_book_key() -> bytes:
    return os.urandom(KEY_BYTES)


def op_aad(book_id: str) -> bytes:
    return b"hp-op-v1:" + book_id.encode()


def photo_aad(book_id: str, photo_id: str) -> bytes:
    return b"hp-photo-v1:" + book_id.encode() + b":" + photo_id.encode()


def snapshot_aad(book_id: str, snapshot_id: str) -> bytes:
    return b"hp-snapshot-v1:" + book_id.encode() + b":" + snapshot_id.encode()


def seal(book_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    if len(book_key) != KEY_BYTES:
        raise ValueError("a book key is 32 bytes")
    nonce = os.urandom(NONCE_BYTES)
    body = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, book_key)
    return bytes([VERSION]) + nonce + body


def open_sealed(book_key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < OVERHEAD or blob[0] != VERSION:
        raise DecryptError("not a Home Pocket ciphertext")
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return bytes(
            bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(body, aad, nonce, book_key)
        )
    except CryptoError:
        raise DecryptError("ciphertext does not open with this key here") from None
