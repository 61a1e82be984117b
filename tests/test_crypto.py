"""Canonical JSON, Ed25519 + DSSE, and RFC 6962 Merkle roots, against closed forms and the RFC."""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from databright.crypto import (
    PublicKey,
    SigningKey,
    canonical_json,
    merkle_root,
    merkle_root_hex,
    open_envelope,
    pae,
    sign_envelope,
)
from databright.errors import IntegrityError


def rfc6962_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1, written as the recursive definition (split at the largest power of two < n)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962_mth(leaves[:k]) + rfc6962_mth(leaves[k:])).digest()


@given(st.lists(st.binary(max_size=40), max_size=70))
def test_merkle_root_is_the_rfc6962_tree_hash(leaves):
    assert merkle_root(leaves) == rfc6962_mth(leaves)


def test_merkle_root_known_values():
    # Empty tree and one leaf, straight from the definitions.
    assert merkle_root_hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle_root([b""]) == hashlib.sha256(b"\x00").digest()
    # Leaf and node hashes are domain-separated: a two-leaf root is not the hash of a concatenation.
    assert merkle_root([b"a", b"b"]) != merkle_root([b"ab"])


def test_merkle_root_depends_on_order_and_every_leaf():
    leaves = [bytes([i]) * 32 for i in range(9)]
    root = merkle_root(leaves)
    assert merkle_root(list(reversed(leaves))) != root
    assert merkle_root([*leaves[:4], b"\xff" * 32, *leaves[5:]]) != root
    assert merkle_root(leaves[:-1]) != root


def test_canonical_json_is_sorted_compact_utf8_and_refuses_non_finite():
    assert canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    assert canonical_json({"x": 1.5}) == canonical_json({"x": 1.5})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(ValueError):
        canonical_json([float("inf")])


def test_pae_matches_the_dsse_specification():
    # The example from the DSSE protocol document.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_envelope_round_trip_and_domain_separation():
    key = SigningKey.from_seed(b"test key")
    envelope = sign_envelope(key, "application/vnd.test.a+json", b'{"n":1}')
    assert open_envelope(envelope, "application/vnd.test.a+json", key.public_key) == b'{"n":1}'
    # The same signature presented as another message type must not verify.
    with pytest.raises(IntegrityError, match="payloadType"):
        open_envelope(envelope, "application/vnd.test.b+json", key.public_key)
    relabelled = {**envelope, "payloadType": "application/vnd.test.b+json"}
    with pytest.raises(IntegrityError, match="does not verify"):
        open_envelope(relabelled, "application/vnd.test.b+json", key.public_key)


@pytest.mark.parametrize("position", [0, 3, 6])
def test_a_flipped_payload_byte_fails_verification(position):
    key = SigningKey.from_seed(b"test key")
    envelope = sign_envelope(key, "t", b"payload")
    body = bytearray(base64.b64decode(envelope["payload"]))
    body[position] ^= 1
    tampered = {**envelope, "payload": base64.b64encode(bytes(body)).decode()}
    with pytest.raises(IntegrityError, match="does not verify"):
        open_envelope(tampered, "t", key.public_key)


def test_an_envelope_signed_by_another_key_is_refused():
    envelope = sign_envelope(SigningKey.from_seed(b"mallory"), "t", b"payload")
    with pytest.raises(IntegrityError, match="no signature by key"):
        open_envelope(envelope, "t", SigningKey.from_seed(b"alice").public_key)


def test_keys_persist_with_owner_only_permissions(tmp_path):
    path = tmp_path / "keys" / "k.pem"
    key = SigningKey.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = SigningKey.load_or_create(path)
    assert again.public_key == key.public_key
    assert PublicKey.from_hex(key.public_key.hex) == key.public_key
    with pytest.raises(IntegrityError, match="32 bytes"):
        PublicKey.from_hex("ab" * 31)


@pytest.mark.parametrize(
    "broken",
    [
        [],
        {"payloadType": "t", "payload": 7, "signatures": []},
        {"payloadType": "t", "payload": "e30=", "signatures": "sig"},
        {"payloadType": "t", "payload": "e30=", "signatures": [42]},
        {"payloadType": "t", "payload": "e30=", "signatures": [{"keyid": 1, "sig": "AA=="}]},
        {"payloadType": "t", "payload": "e30=", "signatures": [{"keyid": "k", "sig": None}]},
    ],
)
def test_a_malformed_envelope_is_an_integrity_error_not_a_crash(broken) -> None:
    with pytest.raises(IntegrityError, match="DSSE"):
        open_envelope(broken, "t", SigningKey.from_seed(b"bob").public_key)


def test_keys_created_by_racing_threads_are_one_key(tmp_path):
    """Sixteen threads create the same key file at once: every one must end up holding the key that is
    on disk, or some signature would be made by a key nobody can load again."""
    path = tmp_path / "keys" / "audit.pem"
    barrier = threading.Barrier(16)
    keys: list[SigningKey] = []

    def create() -> None:
        barrier.wait()
        keys.append(SigningKey.load_or_create(path))

    threads = [threading.Thread(target=create) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    on_disk = SigningKey.load_or_create(path).public_key
    assert len(keys) == 16 and {k.public_key.key_id for k in keys} == {on_disk.key_id}
    assert sorted(p.name for p in path.parent.iterdir()) == ["audit.pem"]  # no temporary file left
