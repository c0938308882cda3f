"""The client's pure parts: identity and tokens, encryption, the CRDT ledger, the sync
position and the reconnect backoff. No server here; the end-to-end tests are apart."""

from __future__ import annotations

import base64
import json
import random
import stat
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from client import crypto
from client.identity import Identity
from client.ledger import KIND_STATE_REQUEST, KIND_UPDATE, Ledger, decode_op, encode_op
from client.session import Backoff, ws_url
from client.state import DeviceState, PendingOp, Position, load, save
from infra import tokens
from infra.errors import ApiError
from infra.ids import device_id_of

BOOK = "5f0e6a63-0d4c-4a4b-9a6e-3d2f1c0b9a88"


def test_key_file_is_owner_only_and_reloads_the_same_device(tmp_path: Path) -> None:
    path = tmp_path / "phone" / "device.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    again = Identity.load_or_create(path)
    assert again.device_id == first.device_id == device_id_of(first.public_key)
    assert len(first.device_id) == 32
    assert first.device_id not in repr(first.public_key) and "seed" not in repr(first)


def test_token_is_accepted_by_the_server_verifier() -> None:
    identity = Identity.generate()
    now = time.time()
    token = identity.token(BOOK, lifetime_s=300, now=now)
    claims = tokens.verify(token, identity.public_key, now, max_lifetime_s=86400)
    assert claims.sub == identity.device_id
    assert claims.book_id == BOOK
    assert claims.exp - claims.iat == 300
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "typ": "JWT"}
    assert "=" not in token  # canonical, unpadded base64url parts
    no_book = Identity.generate()
    assert tokens.verify(no_book.token(None), no_book.public_key, now, 86400).book_id is None


def test_token_signed_by_another_key_is_refused() -> None:
    identity, other = Identity.generate(), Identity.generate()
    with pytest.raises(ApiError) as refused:
        tokens.verify(identity.token(BOOK), other.public_key, time.time(), 86400)
    assert refused.value.details == {"reason": "invalid"}
    expired = identity.token(BOOK, lifetime_s=60, now=time.time() - 120)
    with pytest.raises(ApiError) as late:
        tokens.verify(expired, identity.public_key, time.time(), 86400)
    assert late.value.details == {"reason": "expired"}


def test_seal_round_trip_with_fresh_nonces() -> None:
    key = crypto.new_book_key()
    aad = crypto.op_aad(BOOK)
    first, second = crypto.seal(key, b"groceries", aad), crypto.seal(key, b"groceries", aad)
    assert first != second and first[1:25] != second[1:25]
    assert len(first) == len(b"groceries") + crypto.OVERHEAD
    assert b"groceries" not in first
    assert crypto.open_sealed(key, first, aad) == b"groceries"


def test_wrong_key_wrong_place_or_tampering_fails_to_decrypt() -> None:
    key = crypto.new_book_key()
    blob = crypto.seal(key, b"rent -1200.00", crypto.op_aad(BOOK))
    with pytest.raises(crypto.DecryptError):
        crypto.open_sealed(crypto.new_book_key(), blob, crypto.op_aad(BOOK))
    with pytest.raises(crypto.DecryptError):  # the same bytes moved to another book
        crypto.open_sealed(key, blob, crypto.op_aad("another-book-id-0001"))
    with pytest.raises(crypto.DecryptError):  # an op passed off as a photo
        crypto.open_sealed(key, blob, crypto.photo_aad(BOOK, "p1"))
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(crypto.DecryptError):
        crypto.open_sealed(key, tampered, crypto.op_aad(BOOK))
    with pytest.raises(crypto.DecryptError):
        crypto.open_sealed(key, b"\x01short", crypto.op_aad(BOOK))


def relay(key: bytes, kind: int, update: bytes) -> bytes:
    """What crosses the server: the sealed op."""
    return crypto.seal(key, encode_op(kind, update), crypto.op_aad(BOOK))


def receive(ledger: Ledger, key: bytes, payload: bytes) -> None:
    kind, update = decode_op(crypto.open_sealed(key, payload, crypto.op_aad(BOOK)))
    assert kind in (KIND_UPDATE, KIND_STATE_REQUEST)
    ledger.apply(update)


def test_two_ledgers_converge_through_encrypted_updates_in_any_order() -> None:
    key = crypto.new_book_key()
    alice, bob = Ledger(), Ledger()
    from_alice = [relay(key, KIND_UPDATE, alice.add_entry(-4250, "groceries", "a")[1])]
    from_alice.append(relay(key, KIND_UPDATE, alice.add_entry(-1200, "bus", "a")[1]))
    from_bob = [relay(key, KIND_UPDATE, bob.add_entry(300000, "salary", "b")[1])]
    entry, update = bob.add_entry(-999, "pharmacy", "b")
    from_bob.append(relay(key, KIND_UPDATE, update))
    from_bob.append(relay(key, KIND_UPDATE, bob.attach_photo(entry, "photo-1")))
    for payload in reversed(from_bob):  # out of order, and twice: updates are idempotent
        receive(alice, key, payload)
        receive(alice, key, payload)
    for payload in from_alice:
        receive(bob, key, payload)
    assert alice.entries() == bob.entries()
    assert len(alice.entries()) == 4
    assert alice.balance_cents() == 300000 - 4250 - 1200 - 999
    assert [e.photo_id for e in bob.entries() if e.note == "pharmacy"] == ["photo-1"]


def test_full_state_brings_a_blank_device_up_to_date() -> None:
    key = crypto.new_book_key()
    old = Ledger()
    for i in range(20):
        old.add_entry(-i, f"item {i}", "a")
    new = Ledger()
    receive(new, key, relay(key, KIND_STATE_REQUEST, old.full_state()))
    assert new.entries() == old.entries()


def test_a_ledger_ignores_nothing_but_unknown_kinds() -> None:
    with pytest.raises(ValueError):
        decode_op(b"\x07abc")
    with pytest.raises(ValueError):
        decode_op(b"")


def test_position_is_the_highest_contiguous_seq() -> None:
    position = Position(epoch="e1")
    for seq in (1, 2, 4, 5):
        position.mark(seq)
    assert position.seq == 2
    position.mark(3)
    assert position.seq == 5 and not position.ahead
    position.mark(2)
    assert position.seq == 5
    position.mark(9)
    position.restart("e2", 7)  # a gap: what follows resumes after 7
    assert (position.epoch, position.seq, position.ahead) == ("e2", 7, {9})
    position.mark(8)
    assert position.seq == 9


def test_state_file_round_trip_is_owner_only(tmp_path: Path) -> None:
    state = DeviceState(book_id=BOOK, book_key_b64="a2V5", ledger_b64="")
    state.position = Position(epoch="e", seq=12)
    state.outbox["op1"] = PendingOp("op1", "cGF5bG9hZA==", 1700000000)
    path = tmp_path / "state.json"
    save(path, state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load(path)
    assert loaded.book_id == BOOK and loaded.position.seq == 12 and loaded.position.epoch == "e"
    assert list(loaded.outbox.values()) == [PendingOp("op1", "cGF5bG9hZA==", 1700000000)]


def test_backoff_is_jittered_exponential_between_1_and_60_seconds() -> None:
    backoff = Backoff(rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(1.0 <= d <= 60.0 for d in delays)
    assert 1.0 <= delays[0] <= 2.0 and 2.0 <= delays[1] <= 4.0 and 4.0 <= delays[2] <= 8.0
    assert all(30.0 <= d <= 60.0 for d in delays[6:])
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    backoff.reset()
    assert backoff.next_delay() <= 2.0


def test_socket_url_carries_position_never_a_token() -> None:
    assert ws_url("http://h:8080/", BOOK, 0, None) == f"ws://h:8080/ws/relay/{BOOK}?since=0"
    assert (
        ws_url("https://relay.example", BOOK, 42, "ep")
        == f"wss://relay.example/ws/relay/{BOOK}?since=42&epoch=ep"
    )


def test_protocol_walkthrough_vectors_open() -> None:
    """The vectors in client/PROTOCOL.md are what this client computes."""
    from pairing import sas

    text = (Path(__file__).resolve().parents[2] / "client" / "PROTOCOL.md").read_text()
    blob = bytes.fromhex(
        "016465666768696a6b6c6d6e6f707172737475767778797a7b341c94d5df7ee6e1ec55e91fc91f9d"
        "bd3ec826519249a9c4e3271d91725c700c59a7a2f806ce16f0f033"
    )
    assert blob.hex() in text
    opened = crypto.open_sealed(bytes(range(32)), blob, crypto.op_aad(BOOK))
    assert opened == b"Home Pocket op test vector"
    assert blob[1:25] == bytes(range(100, 124))
    pk_g = bytes.fromhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
    pk_j = bytes.fromhex("29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7")
    assert Identity(SigningKey(bytes(range(32)))).public_key == pk_g
    commit = sas.commitment(pk_g, b"\x11" * 32)
    assert commit.hex() in text
    code = sas.sas(pk_g, pk_j, b"\x11" * 32, b"\x22" * 32)
    assert code == "600359" and code in text
