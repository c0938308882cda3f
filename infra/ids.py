"""Identifiers: device fingerprints, hashed book and IP references, the client's address.

The raw book_id and the client IP never go past this module into storage: callers
keep `book_ref` and `ip_ref` (docs/CONTRACT.md §1).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def device_id_of(public_key: bytes) -> str:
    """Self-certifying id: the first 16 bytes of SHA-256 of the raw key, hex."""
    return hashlib.sha256(public_key).digest()[:16].hex()


class IdHasher:
    """HMAC-SHA256 under ID_HASH_KEY. Losing the key makes every book unreachable."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def book_ref(self, book_id: str) -> str:
        return hmac.new(self._key, book_id.encode(), hashlib.sha256).hexdigest()

    def ip_ref_for_limits(self, ip: str) -> str:
        """The IPv4 address, or the IPv6 /64 (one household's allocation)."""
        return self._ip(ip, 32, 64, "limit")

    def ip_ref_for_audit(self, ip: str) -> str:
        """Blurred further for what is kept 90 days: the /24 or /48."""
        return self._ip(ip, 24, 48, "audit")

    def _ip(self, ip: str, v4_bits: int, v6_bits: int, purpose: str) -> str:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            text = "unknown"
        else:
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
                addr = addr.ipv4_mapped
            bits = v4_bits if addr.version == 4 else v6_bits
            text = str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))
        message = f"ip:{purpose}:{text}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a proxy may write it ("1.2.3.4", "1.2.3.4:5678", "[2001:db8::1]:443"),
    IPv4-mapped IPv6 folded to IPv4 so one client has one form; None when malformed."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port; IPv6 has at least two colons
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def client_ip(scope: Scope, trusted_proxies: Sequence[Network]) -> str:
    """The peer address, or the right-most X-Forwarded-For hop not in TRUSTED_PROXIES
    when the peer is one (docs/CONTRACT.md §6). Never trust the header from anyone else."""
    raw_peer = str((scope.get("client") or ("unknown", 0))[0])
    peer = _parse_ip(raw_peer)
    if peer is None:
        return "unknown"

    def trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr in net for net in trusted_proxies)

    if not trusted_proxies or not trusted(peer):
        return str(peer)
    forwarded: list[str] = []
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            forwarded.extend(value.decode("latin-1").split(","))
    for hop in reversed(forwarded):
        addr = _parse_ip(hop)
        if addr is None:
            # A garbled hop from behind our proxy: not an address we can key on, and
            # never one the client may choose, so all such calls share one bucket.
            return "unknown"
        if not trusted(addr):
            return str(addr)
    return str(peer)
