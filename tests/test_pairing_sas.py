"""The client side of docs/CONTRACT.md §5 (pairing.sas): the published test vectors, the commitment
check, and a key-swapping server caught by the SAS and by the book-key box."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from nacl.bindings import crypto_sign_seed_keypair
from nacl.exceptions import CryptoError

from pairing import sas

README = Path(__file__).resolve().parents[1] / "pairing" / "README.md"

G_SEED = bytes(range(32))
J_SEED = bytes(range(32, 64))
PK_G = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
PK_J = "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7"
# (n_G, n_J, commitment, SAS)
VECTORS = [
    (
        "11" * 32,
        "22" * 32,
        "f680b8b9adfffd2df2cea1d5813b76e67c8862d88ecefe4e171d2a14e26434c0",
        "600359",
    ),
    (
        "00" * 32,
        "ff" * 32,
        "0bb7337f9e8ba645325be89b3ccfee12f297d7143bd27ef2228f0b01eca9b0e7",
        "008263",
    ),
    (
        bytes(range(64, 96)).hex(),
        bytes(range(96, 128)).hex(),
        "4d32d5fd8c2ad5059dda4ff2c2447d488a36a6b3901c13918078dc4b28e7c478",
        "373419",
    ),
]
BOOK_KEY = bytes(range(128, 160))
BOX_NONCE = bytes(range(160, 184))
BOX = (
    "04a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7737d51f22bcb05f890434042bf106148"
    "e20a281e69767619b4ab254a440766fb0808f90e798312d6e699098e348e2e67"
)


def keypair(seed: bytes) -> bytes:
    return bytes(crypto_sign_seed_keypair(seed)[0])


def test_public_keys_of_the_vector_seeds() -> None:
    assert keypair(G_SEED).hex() == PK_G
    assert keypair(J_SEED).hex() == PK_J


@pytest.mark.parametrize(("n_g", "n_j", "commit", "digits"), VECTORS)
def test_sas_vectors(n_g: str, n_j: str, commit: str, digits: str) -> None:
    pk_g, pk_j = bytes.fromhex(PK_G), bytes.fromhex(PK_J)
    ng, nj = bytes.fromhex(n_g), bytes.fromhex(n_j)
    assert sas.commitment(pk_g, ng).hex() == commit
    assert sas.sas(pk_g, pk_j, ng, nj) == digits
    # The same digits straight from the docs/CONTRACT.md §5 formula, without the module.
    digest = hashlib.sha256(b"hp-sas-v1" + pk_g + pk_j + ng + nj).digest()
    assert f"{int.from_bytes(digest[:4], 'big') % 10**6:06d}" == digits
    assert sas.commit_message(pk_g, ng) == b"\x01" + bytes.fromhex(commit)


def test_book_key_box_vector() -> None:
    sealed = sas.seal_book_key(BOOK_KEY, G_SEED, bytes.fromhex(PK_J), BOX_NONCE)
    assert sealed.hex() == BOX
    assert sas.open_book_key(sealed, J_SEED, bytes.fromhex(PK_G)) == BOOK_KEY


def test_readme_publishes_the_same_vectors() -> None:
    text = README.read_text()
    for value in (PK_G, PK_J, BOX, BOOK_KEY.hex(), BOX_NONCE.hex(), G_SEED.hex(), J_SEED.hex()):
        assert value in text.replace("\n", "")
    for n_g, n_j, commit, digits in VECTORS:
        row = re.search(rf"{n_g}.*{n_j}.*{commit}.*\b{digits}\b", text.replace("\n", " "))
        assert row, f"README lacks the vector with SAS {digits}"


def test_reveal_must_match_commitment() -> None:
    pk_g, n_g = keypair(G_SEED), sas.new_nonce()
    commit = sas.commitment(pk_g, n_g)
    sas.check_reveal(commit, pk_g, n_g)
    with pytest.raises(sas.PairingAbort):
        sas.check_reveal(commit, pk_g, sas.new_nonce())


def test_parse_checks_tags_and_lengths() -> None:
    assert sas.parse(sas.nonce_message(b"\x07" * 32)) == (sas.TAG_NONCE, b"\x07" * 32)
    for bad in (b"", b"\x01" + b"\x00" * 31, b"\x09" + b"\x00" * 32, b"\x04" + b"\x00" * 40):
        with pytest.raises(sas.PairingAbort):
            sas.parse(bad)


def test_swapped_keys_are_caught_by_sas_and_box() -> None:
    """A server answering G with its own key M_J and J with its own key M_G."""
    g_seed, j_seed, mg_seed, mj_seed = (bytes([i]) * 32 for i in (1, 2, 3, 4))
    pk_g, pk_j = keypair(g_seed), keypair(j_seed)
    pk_mg, pk_mj = keypair(mg_seed), keypair(mj_seed)
    n_g, n_j = sas.new_nonce(), sas.new_nonce()
    seen_by_g = sas.sas(pk_g, pk_mj, n_g, n_j)  # G thinks pk_MJ is J
    seen_by_j = sas.sas(pk_mg, pk_j, n_g, n_j)  # J thinks pk_MG is G
    assert seen_by_g != seen_by_j
    assert sas.sas(pk_g, pk_j, n_g, n_j) not in (seen_by_g, seen_by_j)
    book_key = b"k" * 32
    to_fake_j = sas.seal_book_key(book_key, g_seed, pk_mj)  # G seals to the key it saw
    with pytest.raises(CryptoError):
        sas.open_book_key(to_fake_j, j_seed, pk_mg)
    with pytest.raises(CryptoError):
        sas.open_book_key(to_fake_j, j_seed, pk_g)
    honest = sas.seal_book_key(book_key, g_seed, pk_j)
    assert sas.open_book_key(honest, j_seed, pk_g) == book_key


def test_key_order_matters() -> None:
    pk_g, pk_j = bytes.fromhex(PK_G), bytes.fromhex(PK_J)
    swapped = [sas.sas(pk_j, pk_g, bytes.fromhex(a), bytes.fromhex(b)) for a, b, _, _ in VECTORS]
    assert swapped == ["814034", "218340", "003737"]


def test_the_server_never_loads_the_client_module() -> None:
    import subprocess
    import sys

    probe = "import sys, infra.app, pairing.app; print('pairing.sas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
