"""Keys, canonical JSON, digests, DSSE envelopes and Merkle trees.

* Canonical JSON: UTF-8, keys sorted, no insignificant whitespace, no NaN/Infinity. Everything
  that is hashed or signed is first turned into these bytes, so two parties agree on a digest.
* Signatures are Ed25519 (``cryptography``) inside DSSE envelopes. DSSE signs the pre-authentication
  encoding ``PAE(payloadType, payload)``, so every message type is domain-separated by its
  ``payloadType`` and a signature over one kind of message can never be replayed as another.
* Merkle trees follow RFC 6962: ``leaf = sha256(0x00 ‖ data)``, ``node = sha256(0x01 ‖ l ‖ r)``,
  split at the largest power of two below n; the empty tree hashes to ``sha256(b"")``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from databright.errors import ConfigError, IntegrityError

# --- canonical JSON and digests ---------------------------------------------------------------


def _reject_non_finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{obj!r} has no canonical JSON form")
    if isinstance(obj, dict):
        for value in obj.values():
            _reject_non_finite(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _reject_non_finite(value)
    return obj


def canonical_json(obj: Any) -> bytes:
    """The one byte encoding of a JSON value that DataBright hashes and signs."""
    _reject_non_finite(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON of ``obj``."""
    return sha256_hex(canonical_json(obj))


def digest_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- Ed25519 keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise IntegrityError(f"public key {text[:16]!r}… is not hex") from exc
        if len(raw) != 32:
            raise IntegrityError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
        return cls(raw)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def key_id(self) -> str:
        """Short stable name for the key: the first 16 hex digits of sha256(raw key)."""
        return sha256_hex(self.raw)[:16]

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key. The raw private bytes never leave this object except via ``save``."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = PublicKey(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Deterministic key from 32 seed bytes (tests and reproducible demos only)."""
        return cls(Ed25519PrivateKey.from_private_bytes(sha256(seed)))

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        if path.exists():
            try:
                loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError as exc:
                raise ConfigError(f"{path} is not a PEM private key; delete it to make a new one") from exc
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ConfigError(f"{path} holds a {type(loaded).__name__}, expected Ed25519")
            return cls(loaded)
        created = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = created._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written under a temporary name with owner-only permissions, then renamed: a crash never
        # leaves a half-written key, and the key is never readable by others, even briefly.
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        tmp.touch(mode=0o600)
        tmp.write_bytes(pem)
        tmp.replace(path)
        return created

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.public_key.key_id})"


# --- DSSE envelopes ---------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign_envelope(key: SigningKey, payload_type: str, payload: bytes) -> dict[str, Any]:
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {
                "keyid": key.public_key.key_id,
                "sig": base64.b64encode(key.sign(pae(payload_type, payload))).decode("ascii"),
            }
        ],
    }


def open_envelope(envelope: dict[str, Any], payload_type: str, public_key: PublicKey) -> bytes:
    """Check the envelope's type and its signature by ``public_key``; return the payload bytes."""
    if envelope.get("payloadType") != payload_type:
        raise IntegrityError(
            f"envelope has payloadType {envelope.get('payloadType')!r}, expected {payload_type!r}"
        )
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
    except (KeyError, ValueError, TypeError) as exc:
        raise IntegrityError(f"malformed DSSE envelope: {exc}") from exc
    message = pae(payload_type, payload)
    for entry in signatures:
        if entry.get("keyid") != public_key.key_id:
            continue
        try:
            sig = base64.b64decode(entry["sig"], validate=True)
        except (KeyError, ValueError) as exc:
            raise IntegrityError(f"malformed DSSE signature: {exc}") from exc
        if public_key.verify(sig, message):
            return payload
        raise IntegrityError(f"DSSE signature by key {public_key.key_id} does not verify")
    raise IntegrityError(f"envelope carries no signature by key {public_key.key_id}")


# --- Merkle trees (RFC 6962) ------------------------------------------------------------------


def merkle_leaf(data: bytes) -> bytes:
    return sha256(b"\x00" + data)


def _node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash over the given leaf data (not yet leaf-hashed)."""
    if not leaves:
        return sha256(b"")
    level = [merkle_leaf(leaf) for leaf in leaves]
    # Pairing left to right and promoting an odd last node unchanged builds exactly the RFC 6962
    # tree (split at the largest power of two), without recursion.
    while len(level) > 1:
        paired = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def merkle_root_hex(leaves: Sequence[bytes]) -> str:
    return merkle_root(leaves).hex()
