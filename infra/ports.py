"""What the capabilities offer each other, as small interfaces.

The relay implements `LiveChannel`: the devices and pairing code reach sockets on
every instance through it without importing the relay. It also implements `Backlog`,
through which storage reads a book's epoch and position and trims the ops a completed
snapshot covers; storage implements `SnapshotIndex`, through which the relay finds
the snapshot to offer on a gap. Neither imports the other. Capabilities register
`BookHooks` to drop their own state when a device is revoked or a book erased.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


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


class BacklogHead(NamedTuple):
    epoch: str
    latest_seq: int


class Backlog(Protocol):
    async def head(self, book_ref: str) -> BacklogHead:
        """The book's current epoch and its latest seq (0: no op yet)."""
        ...

    async def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        """Drop the retained ops with seq <= `seq`, only while the book is in `epoch`."""
        ...


class NoBacklog:
    """Before the relay is wired in: no book has an epoch or an op."""

    async def head(self, book_ref: str) -> BacklogHead:
        return BacklogHead("", 0)

    async def trim_through(self, book_ref: str, epoch: str, seq: int) -> None:
        return None


@dataclass(frozen=True)
class SnapshotRef:
    """A completed snapshot, as the relay names it to a device (never its bytes)."""

    snapshot_id: str
    epoch: str
    covers_seq: int
    size_bytes: int


class SnapshotIndex(Protocol):
    async def latest(self, book_ref: str, epoch: str) -> SnapshotRef | None:
        """The book's latest completed snapshot: the highest `covers_seq` of `epoch`,
        else of the newest epoch that has one (ties to the newest); None when none."""
        ...


class NoSnapshots:
    """Before storage is wired in: no book has a snapshot."""

    async def latest(self, book_ref: str, epoch: str) -> SnapshotRef | None:
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
