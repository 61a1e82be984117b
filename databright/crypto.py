"""Keys, canonical JSON, digests, DSSE envelopes and Merkle trees.

* Canonical JSON: UTF-8, keys sorted, no insignificant whitespace, no NaN/Infinity. Everything
  that is hashed or signed is first turned into these bytes, so two parties agree on a digest.
* Signatures are Ed25519 (``cryptography``) inside DSSE envelopes. DSSE signs the pre-authentication
  encoding ``PAE(payloadType, payload)``, so every message type is domain-separated by its
  ``payloadType`` and a signature over one kind of message can never be replayed as another.
* Merkle trees follow RFC 6962: ``leaf = sha256(0x00 ‖ data)``, ``node = sha256(0x01 ‖ l ‖ r)``,
  split at the largest power of two below n; the empty tree hashes to ``sha256(b"")``.
  ``merkle_root_digests`` computes the same root over 32-byte leaves (record ids) a level at a
  time, hashing large levels in DuckDB's vectorised ``sha256``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from databright.errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    import numpy as np

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
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        # allow_nan=False already refuses NaN and ±Infinity; the walk (run only on failure, as it
        # costs more than the encoding of a small key) names the offending value in the error.
        _reject_non_finite(obj)
        raise
    return text.encode()


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
        # Written under a unique temporary name with owner-only permissions, then hard-linked into
        # place: a crash never leaves a half-written key, the key is never readable by others, and
        # ``link`` refuses an existing name, so when two processes create the key at once exactly one
        # file wins and the loser signs with the winner's key instead of one that no longer exists.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return cls.load_or_create(path)
        finally:
            tmp.unlink(missing_ok=True)
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


def open_envelope(envelope: Any, payload_type: str, public_key: PublicKey) -> bytes:
    """Check the envelope's type and its signature by ``public_key``; return the payload bytes.

    Envelopes arrive from workers and files, so any wrong shape (not an object, signatures not a
    list, a sig that is a number) is an ``IntegrityError`` like a bad signature, never a TypeError.
    """
    if not isinstance(envelope, dict):
        raise IntegrityError(f"envelope is a {type(envelope).__name__}, expected a DSSE object")
    signatures = envelope.get("signatures")
    if (
        not isinstance(envelope.get("payload"), str)
        or not isinstance(signatures, list)
        or not all(
            isinstance(e, dict) and isinstance(e.get("keyid"), str) and isinstance(e.get("sig"), str)
            for e in signatures
        )
    ):
        raise IntegrityError(
            "malformed DSSE envelope: payload must be a base64 string and signatures a list of "
            "{keyid, sig} strings"
        )
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


# Levels of at least this many nodes are hashed by DuckDB's vectorised sha256 (on every core),
# which outruns a Python loop over hashlib once a level pays for the query.
_DUCKDB_MIN_ROWS = 32_768


def merkle_root_digests(leaves: np.ndarray | bytes | bytearray | memoryview) -> bytes:
    """``merkle_root`` over 32-byte leaves (record ids as digests) given as one buffer.

    ``leaves`` is an ``(n, 32)`` uint8 array or ``32·n`` bytes, leaf ``i`` in row ``i`` or bytes
    ``32·i`` to ``32·i + 31``; the root equals ``merkle_root([leaf_0, …, leaf_{n−1}])``, and
    ``sha256(b"")`` for no leaves. Hex record ids: ``merkle_root_digests(bytes.fromhex("".join(ids)))``.
    Each level is laid out as one array of ``prefix ‖ left ‖ right`` rows and hashed row by row;
    an odd last node is promoted unchanged, as in ``merkle_root``.
    """
    import numpy as np

    if isinstance(leaves, bytes | bytearray | memoryview):
        data = memoryview(leaves).cast("B")
        if len(data) % 32:
            raise IntegrityError(
                f"{len(data)} bytes of leaves is not a whole number of 32-byte digests; "
                "pass 32 bytes per leaf (bytes.fromhex of 64-hex-digit record ids)"
            )
        rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, 32)
    else:
        rows = np.asarray(leaves)
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 32:
            raise IntegrityError(
                f"leaves must be an (n, 32) uint8 array of digests, got shape {rows.shape} of {rows.dtype}; "
                "pass one 32-byte digest per row"
            )
    if not len(rows):
        return sha256(b"")
    with _RowHasher(large=len(rows) >= _DUCKDB_MIN_ROWS) as hasher:
        level = hasher.sha256(0, rows)
        while len(level) > 1:
            pairs = len(level) // 2
            parents = hasher.sha256(1, level[: 2 * pairs].reshape(pairs, 64))
            level = np.concatenate([parents, level[2 * pairs :]]) if len(level) % 2 else parents
    return bytes(level[0])


class _RowHasher:
    """``sha256(prefix ‖ row)`` of each row of a uint8 array, as an ``(m, 32)`` array of digests."""

    def __init__(self, *, large: bool) -> None:
        self._con: Any = None
        if large:
            import duckdb

            # Insertion order is kept explicitly: digest i must be the hash of row i.
            self._con = duckdb.connect(config={"preserve_insertion_order": True})

    def __enter__(self) -> _RowHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._con is not None:
            self._con.close()

    def sha256(self, prefix: int, rows: np.ndarray) -> np.ndarray:
        import numpy as np

        m, width = rows.shape[0], rows.shape[1] + 1
        prefixed = np.empty((m, width), dtype=np.uint8)
        prefixed[:, 0] = prefix
        prefixed[:, 1:] = rows
        if m < _DUCKDB_MIN_ROWS or self._con is None:
            buffer, digest = prefixed.tobytes(), hashlib.sha256
            out = b"".join([digest(buffer[i : i + width]).digest() for i in range(0, len(buffer), width)])
            return np.frombuffer(out, dtype=np.uint8).reshape(m, 32)
        import pyarrow as pa

        blobs = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), m, [None, pa.py_buffer(prefixed)])
        hashed = self._con.from_arrow(pa.table({"b": blobs})).project("unhex(sha256(b))").to_arrow_table()
        column = hashed.column(0).combine_chunks()
        width_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
        offsets = np.frombuffer(column.buffers()[1], dtype=width_type)[column.offset : column.offset + m + 1]
        if len(column) != m or column.null_count or offsets[-1] - offsets[0] != 32 * m:
            raise IntegrityError(
                f"DuckDB returned {len(column)} digests for {m} rows; compute the root with merkle_root"
            )
        return np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(m, 32)
