"""The base64 check every op passes through: canonical padded RFC 4648 s.4, measured
without decoding, against the standard library's decoder as the reference."""

from __future__ import annotations

import base64
import binascii

from hypothesis import given
from hypothesis import strategies as st

from infra.validate import base64_size


def reference(value: str) -> int | None:
    """Decode strictly, then require the value to be the canonical encoding."""
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return len(decoded) if base64.b64encode(decoded).decode() == value else None


def test_valid_values_give_their_decoded_size() -> None:
    for size in range(0, 40):
        value = base64.b64encode(bytes(range(size))).decode()
        assert base64_size(value) == size
    assert base64_size("") == 0
    assert base64_size("AAAA") == 3
    assert base64_size("AA==") == 1
    assert base64_size("AAA=") == 2
    assert base64_size("+/+/") == 3


def test_padding_only_at_the_end_and_at_most_two() -> None:
    for value in ("====", "A===", "AA=A", "=AAA", "AA==AAAA", "AAA=AAAA", "A=A="):
        assert base64_size(value) is None, value


def test_non_canonical_trailing_bits_are_refused() -> None:
    assert base64_size("AB==") is None  # low 4 bits of B set
    assert base64_size("AAB=") is None  # low 2 bits of B set
    assert base64_size("AQ==") == 1
    assert base64_size("AAE=") == 2


def test_wrong_length_and_foreign_symbols_are_refused() -> None:
    for value in ("A", "AA", "AAA", "AAAAA", "AA=", "AAAA\n", " AAAA", "AA-_", "AA.A"):
        assert base64_size(value) is None, value


def test_non_ascii_is_refused() -> None:
    for value in ("AAA\u00e9", "\u00e9AAA", "AA\u2028=", "AAAA\U0001f600AAA"):
        assert base64_size(value) is None, value


@given(st.binary(max_size=64))
def test_every_encoding_is_accepted_with_its_size(data: bytes) -> None:
    assert base64_size(base64.b64encode(data).decode()) == len(data)


@given(st.text(alphabet="AQBgw+/=a0\u00e9\n", max_size=16))
def test_agrees_with_the_strict_decoder(value: str) -> None:
    assert base64_size(value) == reference(value)
