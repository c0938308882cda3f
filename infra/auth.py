"""Who is calling: the bearer token checked against the device's registered key.

`authenticate` gives 401s (docs/CONTRACT.md §2); the `require_*` checks give 403s. They are
separate calls because a 429 ranks between them (docs/CONTRACT.md §3 precedence). Keys are read
from the metadata store on every call (the calls of one loop turn share a query), so a
revoked device is refused at once.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from infra import tokens
from infra.clock import Clock
from infra.errors import ApiError, forbidden, invalid_token
from infra.ids import IdHasher, device_id_of
from infra.members import MEMBER, PENDING, Device, Members
from infra.validate import BOOK_ID, DEVICE_ID


@dataclass(frozen=True)
class Caller:
    device: Device
    claims: tokens.Claims

    @property
    def device_id(self) -> str:
        return self.device.device_id


class Authenticator:
    def __init__(self, members: Members, hasher: IdHasher, clock: Clock, max_lifetime_s: int):
        self.members = members
        self.hasher = hasher
        self.clock = clock
        self.max_lifetime_s = max_lifetime_s

    async def authenticate(self, authorization: str | None) -> Caller:
        token = tokens.parse(tokens.bearer(authorization))
        claims = token.claims
        if not DEVICE_ID.fullmatch(claims.sub):
            raise invalid_token("invalid")
        device = await self.members.lookup(claims.sub)
        if device is None:
            # Shape and time errors first, so a client learns what to fix.
            tokens.check_times(claims, self.clock.now(), self.max_lifetime_s)
            raise invalid_token("unknown_device")
        verified = tokens.check(
            token, base64.b64decode(device.public_key), self.clock.now(), self.max_lifetime_s
        )
        return Caller(device=device, claims=verified)

    def verify_new_key(self, authorization: str | None, public_key: bytes) -> tokens.Claims:
        """`POST /devices`: the token must be signed by the key in the body (possession)."""
        token = tokens.bearer(authorization)
        claims = tokens.read_unverified(token)
        if claims.sub != device_id_of(public_key):
            raise invalid_token("invalid")
        return tokens.verify(token, public_key, self.clock.now(), self.max_lifetime_s)

    @staticmethod
    def require_not_revoked(caller: Caller) -> None:
        if caller.device.revoked:
            raise forbidden("revoked", caller.device_id)

    def require_member(self, caller: Caller, book_id: str) -> str:
        """The caller is a current (not pending) member of the book its path names."""
        self.require_not_revoked(caller)
        if caller.claims.book_id != book_id or not BOOK_ID.fullmatch(book_id):
            raise forbidden("wrong_book", caller.device_id)
        book_ref = self.hasher.book_ref(book_id)
        if caller.device.book_ref != book_ref:
            raise forbidden("not_member", caller.device_id)
        if caller.device.role == PENDING:
            raise forbidden("pending", caller.device_id)
        return book_ref

    def require_book_of_caller(self, caller: Caller, allow_pending: bool = False) -> str:
        """For calls that name no book: the caller's own book, with a token whose
        book_id is null or that book."""
        self.require_not_revoked(caller)
        device = caller.device
        if device.book_ref is None:
            raise forbidden("not_member", caller.device_id)
        if device.role == PENDING and not allow_pending:
            raise forbidden("pending", caller.device_id)
        if device.role not in (MEMBER, PENDING):
            raise forbidden("not_member", caller.device_id)
        claimed = caller.claims.book_id
        if claimed is not None and self.hasher.book_ref(claimed) != device.book_ref:
            raise forbidden("wrong_book", caller.device_id)
        return device.book_ref


def unauthenticated() -> ApiError:
    return invalid_token("invalid")
