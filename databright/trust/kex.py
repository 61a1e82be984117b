"""Key exchange: the worker side of key release — an X25519 key per session, data keys wrapped to it.

The exchange side (``keys.KeyService``) decides *whether* a session gets data keys; this module is
*how* they travel, and everything here runs without the exchange's database, so a worker process
imports it alone.

Publishing. A worker session holds an Ed25519 session key bound into its attestation evidence
(``binding_report_data``). After attesting, it makes an X25519 key pair (``KexKeyPair``) and
publishes the public half in a DSSE envelope of its own type (``KEX_KEY_TYPE``), signed by the
attested session key and naming the attestation result id (``KexKeyPair.publish``). The private
half never leaves the session. ``open_kex_envelope`` is the exchange's check of such an envelope
against the signed result it names.

Wrapping. Each data key is wrapped for one recipient: a fresh ephemeral X25519 key, HKDF-SHA256
over the shared secret (salt = ephemeral ‖ recipient public keys, info = ``WRAP_CONTEXT`` + dataset,
version and result id) and AES-256-GCM with every public field of the ``WrappedDataKey`` as AAD, so
none can be relabelled (its ``assurance`` included). Only the session's private X25519 key unwraps
it (``unwrap_data_key``); ``KexKeyPair.unwrap_release`` opens a whole ``KeyRelease`` — the data
keys of v1..vn that ``sealing.open_shards`` needs to read version n.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from databright.crypto import SigningKey, canonical_json, open_envelope, sign_envelope
from databright.errors import AttestationError, IntegrityError
from databright.trust.sealing import KEY_BYTES, DataKey, data_key_id

if TYPE_CHECKING:
    from databright.trust.verifier import AttestationResult

KEX_KEY_TYPE = "application/vnd.databright.kex-key.v1+json"
WRAP_CONTEXT = b"databright/key-release/v1\x00"
_NONCE_BYTES = 12


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- the session's key-exchange key -----------------------------------------------------------


@dataclass(frozen=True)
class KexKey:
    """An X25519 public key that an attested session published, checked against its result."""

    x25519_public_key: str  # hex
    attestation_result_id: str
    session_public_key: str  # Ed25519 hex, the one the result binds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def kex_envelope(session_key: SigningKey, x25519_public_key: str, result_id: str) -> dict[str, Any]:
    """The DSSE envelope in which a session publishes its X25519 key, signed by its session key."""
    payload = {
        "x25519_public_key": x25519_public_key,
        "attestation_result_id": result_id,
        "session_public_key": session_key.public_key.hex,
    }
    return sign_envelope(session_key, KEX_KEY_TYPE, canonical_json(payload))


def open_kex_envelope(envelope: Any, result: AttestationResult) -> KexKey:
    """Check that ``envelope`` is signed by ``result``'s session key and names ``result``."""
    if not isinstance(envelope, dict):
        raise AttestationError(
            "KEX_MALFORMED",
            f"kex key is {type(envelope).__name__}, expected the DSSE envelope KexKeyPair.publish returns",
        )
    try:
        payload = open_envelope(envelope, KEX_KEY_TYPE, result.session_key)
    except IntegrityError as exc:
        raise AttestationError(
            "KEX_SIGNATURE_INVALID",
            f"the X25519 key is not signed by session key {result.session_key.key_id} of attestation "
            f"result {result.result_id} ({exc}); only the attested session may ask for data keys",
            result_id=result.result_id,
        ) from exc
    try:
        data = json.loads(payload)
        kex = KexKey(data["x25519_public_key"], data["attestation_result_id"], data["session_public_key"])
        bytes.fromhex(kex.x25519_public_key)
    except (ValueError, KeyError, TypeError) as exc:
        raise AttestationError(
            "KEX_MALFORMED", f"kex payload lacks a hex x25519_public_key, result id or session key ({exc})"
        ) from exc
    if (kex.attestation_result_id, kex.session_public_key) != (result.result_id, result.session_public_key):
        raise AttestationError(
            "KEX_BINDING_MISMATCH",
            f"the signed X25519 key names attestation result {kex.attestation_result_id!r}, not "
            f"{result.result_id!r}; publish the key again for the current result",
            result_id=result.result_id,
        )
    return kex


# --- wrapping a data key to a session ---------------------------------------------------------


@dataclass(frozen=True)
class WrappedDataKey:
    """One version's data key, encrypted so that only one session's X25519 key opens it."""

    dataset: str
    version: int
    key_id: str
    result_id: str
    assurance: str
    recipient_public_key: str  # X25519 hex
    ephemeral_public_key: str  # X25519 hex
    nonce: str  # hex
    ciphertext: str  # hex: AES-GCM(data key) ‖ tag

    def header(self) -> dict[str, Any]:
        """The public fields, authenticated as AES-GCM AAD: none can be changed in transit."""
        fields = self.to_dict()
        del fields["nonce"], fields["ciphertext"]
        return fields

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WrappedDataKey:
        try:
            wrapped = cls(**dict(data))
        except TypeError as exc:
            raise IntegrityError(f"not a wrapped data key: {exc}") from exc
        if not isinstance(wrapped.version, int) or not all(
            isinstance(getattr(wrapped, f.name), str) for f in dataclasses.fields(cls) if f.name != "version"
        ):
            raise IntegrityError(f"wrapped data key has fields of the wrong type: {wrapped!r}")
        return wrapped


def _kek(
    shared: bytes, ephemeral: bytes, recipient: bytes, dataset: str, version: int, result_id: str
) -> bytes:
    info = WRAP_CONTEXT + canonical_json([dataset, version, result_id])
    return HKDF(hashes.SHA256(), KEY_BYTES, ephemeral + recipient, info).derive(shared)


def _public(text: str, code: str) -> X25519PublicKey:
    try:
        raw = bytes.fromhex(text)
        return X25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise AttestationError(code, f"{text[:16]!r}… is not a 32-byte X25519 public key in hex") from exc


def wrap_to_session(
    data_key: DataKey, recipient_public_key: str, *, result_id: str, assurance: str
) -> WrappedDataKey:
    recipient = _public(recipient_public_key, "KEX_KEY_INVALID")
    ephemeral = X25519PrivateKey.generate()
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError as exc:  # a low-order point would make the shared secret public
        raise AttestationError(
            "KEX_KEY_INVALID", f"X25519 key {recipient_public_key[:16]}… is a weak point; make a new key pair"
        ) from exc
    ephemeral_raw, recipient_raw = _raw(ephemeral.public_key()), _raw(recipient)
    kek = _kek(shared, ephemeral_raw, recipient_raw, data_key.dataset, data_key.version, result_id)
    nonce = os.urandom(_NONCE_BYTES)
    unsealed = WrappedDataKey(
        data_key.dataset,
        data_key.version,
        data_key.key_id,
        result_id,
        assurance,
        recipient_raw.hex(),
        ephemeral_raw.hex(),
        nonce.hex(),
        "",
    )
    ciphertext = AESGCM(kek).encrypt(nonce, data_key.key, canonical_json(unsealed.header()))
    return dataclasses.replace(unsealed, ciphertext=ciphertext.hex())


def unwrap_data_key(wrapped: WrappedDataKey, private: KexKeyPair | X25519PrivateKey) -> DataKey:
    """The worker side: open ``wrapped`` with the session's private X25519 key."""
    key = private.private_key if isinstance(private, KexKeyPair) else private
    mine = _raw(key.public_key()).hex()
    what = f"wrapped data key of {wrapped.dataset!r} v{wrapped.version}"
    if wrapped.recipient_public_key != mine:
        raise IntegrityError(
            f"{what} was released to X25519 key {wrapped.recipient_public_key[:16]}…, not this session's "
            f"{mine[:16]}…; ask the key service for a release to this session"
        )
    try:
        ephemeral = _public(wrapped.ephemeral_public_key, "KEX_KEY_INVALID")
        shared = key.exchange(ephemeral)
        kek = _kek(
            shared,
            bytes.fromhex(wrapped.ephemeral_public_key),
            bytes.fromhex(mine),
            wrapped.dataset,
            wrapped.version,
            wrapped.result_id,
        )
        raw = AESGCM(kek).decrypt(
            bytes.fromhex(wrapped.nonce), bytes.fromhex(wrapped.ciphertext), canonical_json(wrapped.header())
        )
    except (AttestationError, InvalidTag, ValueError) as exc:
        raise IntegrityError(
            f"{what} does not open: a field or the ciphertext was altered in transit; ask for it again",
            dataset=wrapped.dataset,
            version=wrapped.version,
        ) from exc
    if data_key_id(raw) != wrapped.key_id:
        raise IntegrityError(f"{what} opened to a key that is not {wrapped.key_id}; ask for it again")
    return DataKey(wrapped.dataset, wrapped.version, wrapped.key_id, raw)


@dataclass(frozen=True)
class KeyRelease:
    """The data keys of ``dataset`` v1..``version``, wrapped to one attested session."""

    release_id: str
    dataset: str
    version: int
    task: str
    result_id: str
    provider_id: str
    assurance: str
    released_at: str  # ISO 8601, UTC
    keys: tuple[WrappedDataKey, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "keys": [k.to_dict() for k in self.keys]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyRelease:
        if not isinstance(data, Mapping):
            raise IntegrityError(
                f"a key release is a mapping (KeyRelease.to_dict()), got {type(data).__name__}"
            )
        fields = dict(data)
        try:
            keys = tuple(WrappedDataKey.from_dict(k) for k in fields.pop("keys"))
            return cls(**fields, keys=keys)
        except (KeyError, TypeError) as exc:
            raise IntegrityError(f"not a key release: {exc}") from exc


class KexKeyPair:
    """Inside the worker session: an X25519 key pair whose private half never leaves the session."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = _raw(private_key.public_key()).hex()

    @classmethod
    def generate(cls) -> KexKeyPair:
        return cls(X25519PrivateKey.generate())

    def publish(self, session_key: SigningKey, result_id: str) -> dict[str, Any]:
        """The envelope to send with a key request: this key, signed by the attested session key."""
        return kex_envelope(session_key, self.public_key, result_id)

    def unwrap_release(self, release: KeyRelease) -> dict[int, DataKey]:
        """Every data key of a release, by version number (what ``sealing.open_shards`` takes)."""
        keys: dict[int, DataKey] = {}
        for wrapped in release.keys:
            if (wrapped.dataset, wrapped.result_id) != (release.dataset, release.result_id):
                raise IntegrityError(
                    f"release {release.release_id} of {release.dataset!r} under result {release.result_id} "
                    f"carries a key of {wrapped.dataset!r} under result {wrapped.result_id}; ask for it again"
                )
            keys[wrapped.version] = unwrap_data_key(wrapped, self)
        return keys

    def __repr__(self) -> str:
        return f"KexKeyPair(public_key={self.public_key[:16]}…)"
