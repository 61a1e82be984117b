"""The simulated attestation backend: runs everywhere, and says so.

It mirrors the shape of a hardware chain of trust with ordinary Ed25519 keys:

    SimulatedVendorRoot  (keys/sim-vendor-root.pem)         stands in for the CPU vendor's root
        └─ endorses SimulatedPlatform                      {platform_id, tcb_svn, platform key, expiry}
              └─ platform key signs each quote              {tee_type, measurement, signer_id,
                                                             product_id, svn, debug, report_data,
                                                             platform_id}

Nothing here is protected by hardware: whoever can read ``keys/`` can forge quotes. That is why
results from this backend carry ``assurance: simulated`` and a production policy refuses them.
The verifier and policy code paths are nevertheless the same ones a hardware backend uses.

The attester is built from plain, picklable inputs (a key file path and the endorsement envelope)
because it runs inside a worker process that never opens the exchange database.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from databright.crypto import PublicKey, SigningKey, canonical_json, sign_envelope
from databright.errors import AttestationError, ConfigError
from databright.trust.evidence import PLATFORM_ENDORSEMENT_TYPE, SIM_QUOTE_TYPE, iso, utc

TEE_TYPE = "simulated"
ROOT_KEY_FILE = "sim-vendor-root.pem"
_PLATFORM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_REPORT_DATA = 64  # bytes, as in SGX REPORTDATA


def platform_key_path(keys_dir: Path, platform_id: str) -> Path:
    return keys_dir / f"sim-platform-{check_platform_id(platform_id)}.pem"


def platform_endorsement_path(keys_dir: Path, platform_id: str) -> Path:
    return keys_dir / f"sim-platform-{check_platform_id(platform_id)}.endorsement.json"


def check_platform_id(platform_id: str) -> str:
    if not isinstance(platform_id, str) or not _PLATFORM_ID.match(platform_id):
        raise ConfigError(
            f"platform id {platform_id!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (it becomes part of a key file name)"
        )
    return platform_id


def _load_existing_key(path: Path) -> SigningKey:
    if not path.is_file():
        raise ConfigError(
            f"platform key {path} does not exist; run provision_platform (or `databright worker start`) "
            "on this host first"
        )
    return SigningKey.load_or_create(path)


@dataclass(frozen=True)
class SimulatedVendorRoot:
    """The local stand-in for a CPU vendor's root key; it endorses platforms."""

    key: SigningKey

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> SimulatedVendorRoot:
        return cls(SigningKey.load_or_create(keys_dir / ROOT_KEY_FILE))

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key

    def endorse(
        self, platform_id: str, tcb_svn: int, platform_public_key: PublicKey, expires_at: dt.datetime
    ) -> dict[str, Any]:
        """A DSSE envelope by the root over the platform's identity, key and expiry."""
        if isinstance(tcb_svn, bool) or not isinstance(tcb_svn, int) or tcb_svn < 0:
            raise ConfigError(f"tcb_svn {tcb_svn!r} must be a non-negative integer")
        payload = {
            "platform_id": check_platform_id(platform_id),
            "tcb_svn": tcb_svn,
            "platform_public_key": platform_public_key.hex,
            "expires_at": iso(utc(expires_at)),
        }
        return sign_envelope(self.key, PLATFORM_ENDORSEMENT_TYPE, canonical_json(payload))


def read_endorsement(endorsement: dict[str, Any]) -> dict[str, Any]:
    """The endorsement's payload, *unverified*: for the platform to learn its own identity.

    Appraisal never uses this; the verifier opens the envelope with the root's public key.
    """
    try:
        payload = json.loads(base64.b64decode(endorsement["payload"], validate=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"endorsement is not a DSSE envelope with a JSON payload ({exc})") from exc
    if not isinstance(payload, dict):
        raise ConfigError(f"endorsement payload is a {type(payload).__name__}, expected an object")
    return payload


@dataclass(frozen=True)
class SimulatedPlatform:
    """One simulated machine: its identity, the path of its key, and the root's endorsement."""

    platform_id: str
    tcb_svn: int
    key_path: Path
    endorsement: dict[str, Any]

    @classmethod
    def from_files(cls, key_path: Path, endorsement: dict[str, Any]) -> SimulatedPlatform:
        """Rebuild a platform inside a worker from its key file and endorsement envelope."""
        payload = read_endorsement(endorsement)
        key = _load_existing_key(key_path)
        if payload.get("platform_public_key") != key.public_key.hex:
            raise ConfigError(
                f"endorsement is for key {str(payload.get('platform_public_key'))[:16]}…, but {key_path} "
                f"holds key {key.public_key.hex[:16]}…; provision the platform again"
            )
        platform_id = payload.get("platform_id")
        tcb_svn = payload.get("tcb_svn")
        if not isinstance(platform_id, str) or not isinstance(tcb_svn, int):
            raise ConfigError(f"endorsement payload lacks platform_id or tcb_svn: {payload!r}")
        return cls(platform_id=platform_id, tcb_svn=tcb_svn, key_path=key_path, endorsement=endorsement)

    @classmethod
    def load(cls, keys_dir: Path, platform_id: str) -> SimulatedPlatform:
        """A platform provisioned earlier on this host (key and endorsement files in ``keys_dir``)."""
        path = platform_endorsement_path(keys_dir, platform_id)
        if not path.is_file():
            raise ConfigError(f"platform {platform_id!r} has no endorsement at {path}; provision it first")
        try:
            endorsement = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not JSON ({exc}); provision the platform again") from exc
        return cls.from_files(platform_key_path(keys_dir, platform_id), endorsement)

    @property
    def public_key(self) -> PublicKey:
        return _load_existing_key(self.key_path).public_key


def provision_platform(
    keys_dir: Path,
    platform_id: str,
    tcb_svn: int = 3,
    lifetime_days: int = 365,
    *,
    now: dt.datetime | None = None,
) -> SimulatedPlatform:
    """Create (or reuse) the platform key and have the local root endorse it for ``lifetime_days``.

    The endorsement is also written next to the key, so a worker process can ``SimulatedPlatform.load``.
    """
    if isinstance(lifetime_days, bool) or not isinstance(lifetime_days, int) or lifetime_days <= 0:
        raise ConfigError(f"lifetime_days {lifetime_days!r} must be a positive number of days")
    root = SimulatedVendorRoot.load_or_create(keys_dir)
    key_path = platform_key_path(keys_dir, platform_id)
    key = SigningKey.load_or_create(key_path)
    expires_at = utc(now) + dt.timedelta(days=lifetime_days)
    endorsement = root.endorse(platform_id, tcb_svn, key.public_key, expires_at)
    out = platform_endorsement_path(keys_dir, platform_id)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(endorsement, sort_keys=True, indent=2), encoding="utf-8")
    tmp.replace(out)
    return SimulatedPlatform(platform_id, tcb_svn, key_path, endorsement)


class SimulatedAttester:
    """Builds simulated evidence inside a worker: a quote signed by the platform key, plus endorsement."""

    tee_type = TEE_TYPE

    def __init__(self, platform: SimulatedPlatform) -> None:
        self.platform = platform

    @classmethod
    def from_files(cls, key_path: Path, endorsement: dict[str, Any]) -> SimulatedAttester:
        return cls(SimulatedPlatform.from_files(key_path, endorsement))

    def evidence(
        self,
        measurement: str,
        signer_id: str,
        product_id: int,
        svn: int,
        report_data: bytes,
        debug: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(measurement, str) or not _HEX64.match(measurement):
            raise AttestationError(
                "ATTESTER_INPUT_INVALID",
                f"measurement {measurement!r} is not 64 lowercase hex digits; pass measure_task(...)",
            )
        if not isinstance(signer_id, str) or not signer_id:
            raise AttestationError(
                "ATTESTER_INPUT_INVALID", f"signer_id {signer_id!r} must be a non-empty string"
            )
        for name, value in (("product_id", product_id), ("svn", svn)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AttestationError(
                    "ATTESTER_INPUT_INVALID", f"{name} {value!r} must be a non-negative integer"
                )
        if not isinstance(report_data, bytes) or not 0 < len(report_data) <= MAX_REPORT_DATA:
            raise AttestationError(
                "ATTESTER_INPUT_INVALID",
                f"report_data must be 1-{MAX_REPORT_DATA} bytes, got {report_data!r:.40}; "
                "pass binding_report_data(session_public_key, nonce)",
            )
        quote = {
            "tee_type": TEE_TYPE,
            "measurement": measurement,
            "signer_id": signer_id,
            "product_id": product_id,
            "svn": svn,
            "debug": bool(debug),
            "report_data": report_data.hex(),
            "platform_id": self.platform.platform_id,
        }
        key = _load_existing_key(self.platform.key_path)
        return {
            "tee_type": TEE_TYPE,
            "quote": sign_envelope(key, SIM_QUOTE_TYPE, canonical_json(quote)),
            "endorsement": self.platform.endorsement,
        }
