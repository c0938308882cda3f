"""Pairing a new phone into a book: the client side of docs/CONTRACT.md §5, driven through
`/pairing/exchange`. The message formats and the SAS are `pairing.sas` (pure, shared
with the server's docs and tests); this module runs the steps in order over HTTP.

G generates the code and already holds the book; J types the code. Deposits:
    G: 0x01 ‖ SHA-256("hp-sas-commit-v1" ‖ pk_G ‖ n_G)   commit to n_G
    J: 0x02 ‖ n_J                                        reveal n_J
    G: 0x03 ‖ n_G                                        open the commitment (J checks it)
    both show the SAS; the users compare
    G: confirm, then 0x04 ‖ nonce(24) ‖ crypto_box(book_key) from G's key to J's
The book key is never deposited before the user said the codes match, and never in clear.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError

from client.device import Device
from client.identity import device_id_of, unb64
from pairing import sas
from pairing.sas import PairingAbort

POLL_S = 0.2

# The app's comparison screen: called with the six digits this phone shows; returns True
# once the user said the other phone shows the same, False if not (G then rejects).
CompareSas = Callable[[str], Awaitable[bool]]


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


async def invite(device: Device) -> Invitation:
    """G: ask for a 6-digit code to show to the new phone's user. Show
    `invitation.short_code`, then run `run_generator(device, invitation, compare)`."""
    made = await device.api.pairing_generate()
    return Invitation(str(made["short_code"]), str(made["pairing_id"]), str(made["expires_at"]))


def _messages(answer: dict[str, Any]) -> dict[int, bytes]:
    """The peer's deposits by tag (the first of each), each checked by `sas.parse`."""
    found: dict[int, bytes] = {}
    for text in answer.get("payloads") or []:
        tag, body = sas.parse(base64.b64decode(text, validate=True))
        found.setdefault(tag, body)
    return found


async def _wait_for(
    device: Device, pairing_id: str, tag: int | None, within_s: float, status: str | None = None
) -> tuple[dict[str, Any], bytes]:
    """Poll `exchange` until the peer has deposited `tag` (and the session has `status`);
    a rejection ends the pairing. With tag None: until the peer's key is known."""
    async with asyncio.timeout(within_s):
        while True:
            answer = dict(await device.api.pairing_exchange(pairing_id))
            if answer.get("status") == "rejected":
                raise PairingAbort("the other side rejected the pairing")
            if status is None or answer.get("status") == status:
                if tag is None and answer.get("peer_public_key"):
                    return answer, b""
                body = _messages(answer).get(tag) if tag is not None else None
                if body is not None:
                    return answer, body
            await asyncio.sleep(POLL_S)


def _peer_key(answer: dict[str, Any]) -> bytes:
    """The peer's key, checked against its self-certifying id."""
    key = unb64(str(answer["peer_public_key"]))
    if len(key) != 32 or device_id_of(key) != answer.get("peer_device_id"):
        raise PairingAbort("the peer's key does not match its device_id")
    return key


async def run_generator(
    device: Device, invitation: Invitation, compare: CompareSas, within_s: float = 300
) -> Paired:
    """G, once the code is shown: steps 1, 3, 4 and 5 of docs/CONTRACT.md §5.

    Waits for the joiner, commits, reveals, calls `compare(sas)`, confirms (or rejects
    and raises `PairingAbort`), and boxes the book key to the joiner. → `Paired`."""
    pid = invitation.pairing_id
    matched, _ = await _wait_for(device, pid, None, within_s)
    pk_g, pk_j = device.identity.public_key, _peer_key(matched)
    n_g = sas.new_nonce()
    await device.api.pairing_exchange(pid, sas.commit_message(pk_g, n_g))
    _, n_j = await _wait_for(device, pid, sas.TAG_NONCE, within_s)
    await device.api.pairing_exchange(pid, sas.reveal_message(n_g))
    code = sas.sas(pk_g, pk_j, n_g, n_j)
    if not await compare(code):
        await device.api.pairing_confirm(pid, False)
        raise PairingAbort("the codes did not match: pairing rejected")
    await device.api.pairing_confirm(pid, True)
    seed = bytes(device.identity.signing_key)
    await device.api.pairing_exchange(pid, sas.seal_book_key(device.book_key, seed, pk_j))
    return Paired(code, device_id_of(pk_j), device.require_book())


async def run_joiner(
    device: Device, short_code: str, compare: CompareSas, within_s: float = 300
) -> Paired:
    """J (registered with `register()`, in no book): verify the code, then steps 2, 3
    (the check), 4, and receive step 5. Its tokens carry `book_id: null` until then;
    afterwards the device is in the book with its key. Raises `PairingAbort`, or
    `RelayError` (`INVALID_SHORT_CODE`, `SHORT_CODE_EXPIRED`, `BOOK_FULL`, …)."""
    verified = await device.api.pairing_verify(short_code)
    pid, book_id = str(verified["pairing_id"]), str(verified["book_id"])
    pk_g, pk_j = _peer_key(verified), device.identity.public_key
    _, commit = await _wait_for(device, pid, sas.TAG_COMMIT, within_s)
    n_j = sas.new_nonce()
    await device.api.pairing_exchange(pid, sas.nonce_message(n_j))
    _, n_g = await _wait_for(device, pid, sas.TAG_REVEAL, within_s)
    sas.check_reveal(commit, pk_g, n_g)
    code = sas.sas(pk_g, pk_j, n_g, n_j)
    if not await compare(code):
        raise PairingAbort("the codes did not match: not joining")
    _, boxed = await _wait_for(device, pid, sas.TAG_BOOK_KEY, within_s, status="confirmed")
    seed = bytes(device.identity.signing_key)
    try:
        book_key = sas.open_book_key(bytes([sas.TAG_BOOK_KEY]) + boxed, seed, pk_g)
    except CryptoError:
        raise PairingAbort("the book key was not boxed by the paired device") from None
    if len(book_key) != 32:
        raise PairingAbort("the book key has the wrong length")
    device.join_book(book_id, book_key)
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
