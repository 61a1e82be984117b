"""``merkle_root_digests``: the RFC 6962 root of ``merkle_root``, from one buffer of 32-byte leaves."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright import crypto
from databright.crypto import merkle_root, merkle_root_digests, merkle_root_hex
from databright.errors import IntegrityError


def _leaves(n: int, seed: int = 0) -> list[bytes]:
    data = np.random.default_rng(seed).bytes(32 * n)
    return [data[i : i + 32] for i in range(0, len(data), 32)]


def test_every_size_up_to_70_gives_the_root_of_merkle_root() -> None:
    for n in range(71):
        leaves = _leaves(n, seed=n)
        expected = merkle_root(leaves)
        joined = b"".join(leaves)
        assert merkle_root_digests(joined) == expected, n
        assert merkle_root_digests(np.frombuffer(joined, dtype=np.uint8).reshape(n, 32)) == expected, n


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=150))
@settings(max_examples=60, deadline=None)
def test_any_leaves_give_the_root_of_merkle_root(leaves: list[bytes]) -> None:
    assert merkle_root_digests(b"".join(leaves)) == merkle_root(leaves)


def test_levels_hashed_by_duckdb_give_the_same_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Above the threshold and past DuckDB's parallel scan, with odd levels (…, 7813, 3907, …).
    leaves = _leaves(250_001, seed=1)
    expected = merkle_root(leaves)
    assert merkle_root_digests(b"".join(leaves)) == expected
    monkeypatch.setattr(crypto, "_DUCKDB_MIN_ROWS", 1)  # every level through DuckDB, down to the root
    assert merkle_root_digests(b"".join(leaves)) == expected
    for n in (1, 2, 3, 7, 64, 65):
        assert merkle_root_digests(b"".join(leaves[:n])) == merkle_root(leaves[:n]), n


def test_the_empty_tree_and_one_leaf_follow_the_definitions() -> None:
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle_root_digests(b"").hex() == empty == merkle_root_hex([])
    assert merkle_root_digests(np.zeros((0, 32), dtype=np.uint8)).hex() == empty
    leaf = bytes(range(32))
    assert merkle_root_digests(leaf) == hashlib.sha256(b"\x00" + leaf).digest()


def test_hex_record_ids_other_buffers_and_strided_arrays() -> None:
    leaves = _leaves(37, seed=2)
    ids = [leaf.hex() for leaf in leaves]
    expected = merkle_root_hex([bytes.fromhex(i) for i in ids])
    assert merkle_root_digests(bytes.fromhex("".join(ids))).hex() == expected
    assert merkle_root_digests(bytearray(b"".join(leaves))).hex() == expected
    assert merkle_root_digests(memoryview(b"".join(leaves))).hex() == expected
    wide = np.zeros((37, 40), dtype=np.uint8)  # each leaf is a strided slice of a wider row
    wide[:, 4:36] = np.frombuffer(b"".join(leaves), dtype=np.uint8).reshape(37, 32)
    assert merkle_root_digests(wide[:, 4:36]).hex() == expected


def test_leaves_that_are_not_32_byte_digests_are_refused() -> None:
    with pytest.raises(IntegrityError, match="33 bytes of leaves is not a whole number of 32-byte digests"):
        merkle_root_digests(bytes(33))
    with pytest.raises(IntegrityError, match=r"got shape \(3, 31\) of uint8"):
        merkle_root_digests(np.zeros((3, 31), dtype=np.uint8))
    with pytest.raises(IntegrityError, match=r"got shape \(2, 32\) of int64"):
        merkle_root_digests(np.zeros((2, 32), dtype=np.int64))
    with pytest.raises(IntegrityError, match=r"got shape \(64,\) of uint8"):
        merkle_root_digests(np.zeros(64, dtype=np.uint8))
