"""What the capabilities offer each other, as small interfaces.

The relay implements `LiveChannel`: the devices and pairing code reach sockets on
every instance through it without importing the relay. Capabilities register
`BookHooks` to drop their own state when a device is revoked or a book erased.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class LiveChannel(Protocol):
    async def online_devices(self, book_ref: str) -> set[str]:
        """Device ids with an open socket on any instance."""
        ...

    async def send_to_device(self, book_ref: str, device_id: str, message: dict[str, Any]) -> None:
        """A control message to every socket of one device, on any instance."""
        ...

    async def send_to_book(
        self, book_ref: str, message: dict[str, Any], exclude_device: str | None = None
    ) -> None:
        """A control message to every socket of the book, on any instance."""
        ...

    async def close_device(self, book_ref: str, device_id: str, code: int, reason: str) -> None: ...

    async def close_book(self, book_ref: str, code: int, reason: str) -> None: ...


class NoLiveChannel:
    """Before the relay is wired in: nobody is online, nothing to tell."""

    async def online_devices(self, book_ref: str) -> set[str]:
        return set()

    async def send_to_device(self, book_ref: str, device_id: str, message: dict[str, Any]) -> None:
        return None

    async def send_to_book(
        self, book_ref: str, message: dict[str, Any], exclude_device: str | None = None
    ) -> None:
        return None

    async def close_device(self, book_ref: str, device_id: str, code: int, reason: str) -> None:
        return None

    async def close_book(self, book_ref: str, code: int, reason: str) -> None:
        return None


DeviceHook = Callable[[str, str], Awaitable[None]]  # (book_ref, device_id)
BookHook = Callable[[str], Awaitable[None]]  # (book_ref)


@dataclass
class BookHooks:
    on_device_revoked: list[DeviceHook] = field(default_factory=list)
    on_book_erased: list[BookHook] = field(default_factory=list)

    async def device_revoked(self, book_ref: str, device_id: str) -> None:
        for hook in self.on_device_revoked:
            await hook(book_ref, device_id)

    async def book_erased(self, book_ref: str) -> None:
        for hook in self.on_book_erased:
            await hook(book_ref)
