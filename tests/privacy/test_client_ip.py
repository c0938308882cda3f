"""Whose address a call comes from (docs/CONTRACT.md §6), and the hashed keys made of it
(§1)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from infra.ids import IdHasher, client_ip

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
HASHER = IdHasher("k" * 40)


def scope(peer: str, *forwarded: str) -> dict[str, Any]:
    return {
        "client": (peer, 5555),
        "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded],
    }


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert client_ip(scope("198.51.100.7", "203.0.113.1"), ()) == "198.51.100.7"


def test_header_from_an_untrusted_peer_is_ignored() -> None:
    assert client_ip(scope("198.51.100.7", "203.0.113.1"), PROXIES) == "198.51.100.7"


def test_trusted_peer_gives_the_rightmost_untrusted_hop() -> None:
    # The client may write anything on the left; only what our proxies appended counts.
    s = scope("10.0.0.2", "6.6.6.6, 203.0.113.1, 10.1.1.1")
    assert client_ip(s, PROXIES) == "203.0.113.1"


def test_several_header_lines_are_one_list() -> None:
    s = scope("10.0.0.2", "6.6.6.6", "203.0.113.1, 10.9.9.9")
    assert client_ip(s, PROXIES) == "203.0.113.1"


def test_every_hop_trusted_gives_the_peer() -> None:
    assert client_ip(scope("10.0.0.2", "10.3.3.3, 10.4.4.4"), PROXIES) == "10.0.0.2"
    assert client_ip(scope("10.0.0.2"), PROXIES) == "10.0.0.2"


def test_ipv4_mapped_peer_is_trusted_and_folded() -> None:
    s = scope("::ffff:10.0.0.2", "::ffff:203.0.113.9")
    assert client_ip(s, PROXIES) == "203.0.113.9"
    assert client_ip(scope("::ffff:198.51.100.7"), ()) == "198.51.100.7"


def test_ipv6_proxy_and_client() -> None:
    s = scope("fd00::1", "2001:db8:1:2::99")
    assert client_ip(s, PROXIES) == "2001:db8:1:2::99"


@pytest.mark.parametrize(
    ("hop", "expected"),
    [("203.0.113.1:4431", "203.0.113.1"), ("[2001:db8::5]:443", "2001:db8::5")],
)
def test_hops_with_ports(hop: str, expected: str) -> None:
    assert client_ip(scope("10.0.0.2", hop), PROXIES) == expected


def test_garbled_hop_is_one_shared_unknown_bucket() -> None:
    assert client_ip(scope("10.0.0.2", "203.0.113.1, not-an-ip"), PROXIES) == "unknown"
    assert client_ip({"headers": []}, PROXIES) == "unknown"


def test_limit_keys_are_the_ipv4_address_or_the_ipv6_slash_64() -> None:
    assert HASHER.ip_ref_for_limits("203.0.113.1") != HASHER.ip_ref_for_limits("203.0.113.2")
    same_64 = {HASHER.ip_ref_for_limits(a) for a in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9")}
    assert len(same_64) == 1
    assert HASHER.ip_ref_for_limits("2001:db8:1:3::1") not in same_64
    assert HASHER.ip_ref_for_limits("::ffff:203.0.113.1") == HASHER.ip_ref_for_limits("203.0.113.1")


def test_audit_refs_are_blurred_to_slash_24_and_slash_48() -> None:
    assert HASHER.ip_ref_for_audit("203.0.113.1") == HASHER.ip_ref_for_audit("203.0.113.200")
    assert HASHER.ip_ref_for_audit("203.0.113.1") != HASHER.ip_ref_for_audit("203.0.114.1")
    assert HASHER.ip_ref_for_audit("2001:db8:1:2::1") == HASHER.ip_ref_for_audit("2001:db8:1:ff::")
    assert HASHER.ip_ref_for_audit("2001:db8:1::") != HASHER.ip_ref_for_audit("2001:db8:2::")
    # Limits and audit never share a hash, so one cannot be joined to the other.
    assert HASHER.ip_ref_for_audit("203.0.113.1") != HASHER.ip_ref_for_limits("203.0.113.1")


def test_refs_hold_no_address_and_depend_on_the_key() -> None:
    ref = HASHER.ip_ref_for_limits("203.0.113.1")
    assert len(ref) == 32 and all(c in "0123456789abcdef" for c in ref)
    assert IdHasher("j" * 40).ip_ref_for_limits("203.0.113.1") != ref
