"""Pairing a new phone into a book, the client side of SPEC 5, step by step.

G generates the code and already holds the book; J types the code. Both talk only
through `/pairing/exchange`, depositing `tag ‖ body` payloads:
    0x01 ‖ SHA-256("hp-sas-commit-v1" ‖ pk_G ‖ n_G)   G commits to its nonce
    0x02 ‖ n_J                                        J reveals its nonce
    0x03 ‖ n_G                                        G opens its commitment
    0x04 ‖ nonce(24) ‖ crypto_box(book_key)           G → J, after the users compared
Both show the 6-digit SAS; the users compare it. A server that swapped keys has one
chance in a million to make them match. The book key never passes in clear and is
never deposited before the user said the codes match.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from client import crypto
from client.device import Device
from client.identity import device_id_of, unb64

TAG_COMMIT, TAG_NONCE_J, TAG_NONCE_G, TAG_BOOK_KEY = 0x01, 0x02, 0x03, 0x04
NONCE_BYTES = 32
POLL_S = 0.2

CompareSas = Callable[[str], Awaitable[bool]]


class PairingAborted(Exception):
    """The peer cheated (commitment mismatch, wrong key), the user said the codes differ,
    or the other side rejected."""


@dataclass(frozen=True)
class Invitation:
    short_code: str
    pairing_id: str
    expires_at: str


@dataclass(frozen=True)
class Paired:
    sas: str
    peer_device_id: str
    book_id: str


def _sas() -> Any:
    import importlib

    return importlib.import_module("pairing.sas")


async def invite(device: Device) -> Invitation:
    """G: ask for a 6-digit code to show to the new phone's user."""
    made = await device.api.pairing_generate()
    return Invitation(str(made["short_code"]), str(made["pairing_id"]), str(made["expires_at"]))


async def _exchange(device: Device, pairing_id: str, payload: bytes | None = None) -> Any:
    return await device.api.pairing_exchange(pairing_id, payload)


async def _await(
    device: Device,
    pairing_id: str,
    ready: Callable[[dict[str, Any]], bool],
    within_s: float,
) -> dict[str, Any]:
    """Poll `exchange` (no payload) until `ready(answer)`; a rejection ends it."""
    async with asyncio.timeout(within_s):
        while True:
            answer = dict(await _exchange(device, pairing_id))
            if answer.get("status") == "rejected":
                raise PairingAborted("the other side rejected the pairing")
            if ready(answer):
                return answer
            await asyncio.sleep(POLL_S)


def _find(answer: dict[str, Any], tag: int, size: int) -> bytes | None:
    """The peer's first deposited payload with this tag and body size, if any."""
    for text in answer.get("payloads") or []:
        raw = base64.b64decode(text)
        if raw[:1] == bytes([tag]) and len(raw) == 1 + size:
            return raw[1:]
    return None


def _peer_key(answer: dict[str, Any]) -> bytes:
    """The peer's key, checked against its self-certifying id."""
    key = unb64(str(answer["peer_public_key"]))
    if len(key) != 32 or device_id_of(key) != answer.get("peer_device_id"):
        raise PairingAborted("the peer's key does not match its device_id")
    return key


async def run_generator(
    device: Device, invitation: Invitation, compare: CompareSas, within_s: float = 300
) -> Paired:
    """G's side, once the code is shown: steps 1, 3, 4 and 5 of SPEC 5."""
    sas = _sas()
    pid = invitation.pairing_id
    matched = await _await(device, pid, lambda a: a.get("peer_public_key") is not None, within_s)
    pk_g, pk_j = device.identity.public_key, _peer_key(matched)
    n_g = os.urandom(NONCE_BYTES)
    await _exchange(device, pid, bytes([TAG_COMMIT]) + sas.commitment(pk_g, n_g))
    answer = await _await(
        device, pid, lambda a: _find(a, TAG_NONCE_J, NONCE_BYTES) is not None, within_s
    )
    n_j = _find(answer, TAG_NONCE_J, NONCE_BYTES)
    assert n_j is not None
    await _exchange(device, pid, bytes([TAG_NONCE_G]) + n_g)
    code = sas.sas(pk_g, pk_j, n_g, n_j)
    if not await compare(code):
        await device.api.pairing_confirm(pid, False)
        raise PairingAborted("the codes did not match: pairing rejected")
    await device.api.pairing_confirm(pid, True)
    boxed = crypto.box_book_key(device.book_key, device.identity.signing_key, pk_j)
    await _exchange(device, pid, bytes([TAG_BOOK_KEY]) + boxed)
    return Paired(code, device_id_of(pk_j), device.require_book())


async def run_joiner(
    device: Device, short_code: str, compare: CompareSas, within_s: float = 300
) -> Paired:
    """J's side: verify the code, then steps 2, 3 (check), 4 and receive step 5."""
    sas = _sas()
    verified = await device.api.pairing_verify(short_code)
    pid, book_id = str(verified["pairing_id"]), str(verified["book_id"])
    pk_g, pk_j = _peer_key(verified), device.identity.public_key
    answer = await _await(device, pid, lambda a: _find(a, TAG_COMMIT, 32) is not None, within_s)
    commitment = _find(answer, TAG_COMMIT, 32)
    n_j = os.urandom(NONCE_BYTES)
    await _exchange(device, pid, bytes([TAG_NONCE_J]) + n_j)
    answer = await _await(
        device, pid, lambda a: _find(a, TAG_NONCE_G, NONCE_BYTES) is not None, within_s
    )
    n_g = _find(answer, TAG_NONCE_G, NONCE_BYTES)
    assert n_g is not None
    if sas.commitment(pk_g, n_g) != commitment:
        raise PairingAborted("the generator's nonce does not match its commitment")
    code = sas.sas(pk_g, pk_j, n_g, n_j)
    if not await compare(code):
        raise PairingAborted("the codes did not match: not joining")
    boxed_size = 24 + crypto.KEY_BYTES + 16
    answer = await _await(
        device,
        pid,
        lambda a: a.get("status") == "confirmed" and _find(a, TAG_BOOK_KEY, boxed_size) is not None,
        within_s,
    )
    boxed = _find(answer, TAG_BOOK_KEY, boxed_size)
    assert boxed is not None
    device.join_book(book_id, crypto.unbox_book_key(boxed, device.identity.signing_key, pk_g))
    return Paired(code, device_id_of(pk_g), book_id)


async def side_by_side(
    generator: Device,
    joiner: Device,
    invitation: Invitation | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> tuple[Paired, Paired]:
    """Both sides at once, as two people holding their phones side by side: each phone
    shows its code, and each answers "match" only if the two codes are equal."""
    invitation = invitation or await invite(generator)
    shown: dict[str, str] = {}
    both = asyncio.Event()

    def screen(device: Device) -> CompareSas:
        async def compare(code: str) -> bool:
            shown[device.name] = code
            say(f"   {device.name}'s phone shows the code to compare: {code}")
            if len(shown) == 2:
                both.set()
            await asyncio.wait_for(both.wait(), 60)
            return len(set(shown.values())) == 1

        return compare

    return await asyncio.gather(
        run_generator(generator, invitation, screen(generator)),
        run_joiner(joiner, invitation.short_code, screen(joiner)),
    )
