"""The appraisal policy: what evidence the exchange accepts, as one versioned, digestible file.

A policy names the tee types it trusts, the allowed measurement of each enclave task, the allowed
signers and products, the minimum security version, whether debug enclaves pass (never in
production), the TCB statuses accepted from hardware collateral, how long a result stays valid and
how long a nonce may wait. Its ``digest`` is written into every attestation result, so a result
always says which rules admitted it.

Hardware evidence (``sgx-dcap``, ``tdx``) is judged on what the CPU measured, not on what a worker
claims, so it has rules of its own: ``acceptable_tcb_statuses`` (the platform's TCB level from Intel's
collateral), ``denied_advisories`` (Intel security advisories refused whatever the status) and
``hardware_identities``, one section per hardware tee type with the allowed measurements per task
(MRENCLAVE for SGX; ``tdx_measurement`` of MRTD and the RTMRs for TDX), signers (MRSIGNER for SGX,
MROWNER for TDX), product ids and minimum svn. The top-level ``measurements``, ``signer_ids``,
``product_ids`` and ``min_svn`` are the identities the ``simulated`` backend is judged by. Both new
fields are optional in the file (absent means "none"), so older policy files keep loading.

``policies/attestation.yaml`` is the development policy (it allows ``simulated``);
``production_policy(dev)`` derives the production one, which refuses it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from databright.crypto import digest_json
from databright.errors import AttestationError, ConfigError
from databright.trust.evidence import HARDWARE_TEE_TYPES, KNOWN_TEE_TYPES

if TYPE_CHECKING:
    from databright.trust.dcap import VerifiedQuote

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ADVISORY = re.compile(r"^INTEL-SA-[0-9]{5}$")
# What each hardware tee type calls its signer: MRSIGNER (32 bytes) for SGX, MROWNER (48) for TDX.
_SIGNER_HEX_DIGITS = {"sgx-dcap": 64, "tdx": 96}
_MAX_U16 = 0xFFFF
# TCB statuses a policy may accept. "Revoked" is not among them: no policy can admit a revoked platform.
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
_OPTIONAL_FIELDS = ("denied_advisories", "hardware_identities")
_FIELDS = (
    "name",
    "version",
    "allowed_tee_types",
    "measurements",
    "signer_ids",
    "product_ids",
    "min_svn",
    "allow_debug",
    "acceptable_tcb_statuses",
    "result_lifetime_seconds",
    "nonce_ttl_seconds",
)


@dataclass(frozen=True)
class HardwareIdentity:
    """The enclaves a policy admits from one hardware tee type, as the CPU measured them."""

    measurements: dict[str, tuple[str, ...]]  # task -> allowed measurements (64 hex)
    signer_ids: tuple[str, ...]  # MRSIGNER (SGX) / MROWNER (TDX), lowercase hex
    product_ids: tuple[int, ...]
    min_svn: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "measurements": {task: list(values) for task, values in sorted(self.measurements.items())},
            "signer_ids": list(self.signer_ids),
            "product_ids": list(self.product_ids),
            "min_svn": self.min_svn,
        }


@dataclass(frozen=True)
class AttestationPolicy:
    name: str
    version: int
    allowed_tee_types: tuple[str, ...]
    measurements: dict[str, tuple[str, ...]]
    signer_ids: tuple[str, ...]
    product_ids: tuple[int, ...]
    min_svn: int
    allow_debug: bool
    acceptable_tcb_statuses: tuple[str, ...]
    result_lifetime_seconds: int
    nonce_ttl_seconds: int
    denied_advisories: tuple[str, ...] = ()
    hardware_identities: dict[str, HardwareIdentity] = dataclasses.field(default_factory=dict)

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> AttestationPolicy:
        if not path.is_file():
            raise ConfigError(f"attestation policy {path} does not exist; restore policies/attestation.yaml")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"attestation policy {path} is not valid YAML ({exc}); fix the file") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "policy") -> AttestationPolicy:
        if not isinstance(data, dict):
            raise ConfigError(f"{source} holds a {type(data).__name__}, expected a mapping of policy fields")
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            raise ConfigError(
                f"{source} is missing field(s) {', '.join(missing)}; add them (see the module doc)"
            )
        unknown = sorted(map(str, set(data) - set(_FIELDS) - set(_OPTIONAL_FIELDS)))
        if unknown:
            raise ConfigError(
                f"{source} has unknown field(s) {', '.join(unknown)}; check the spelling "
                f"(fields: {', '.join(_FIELDS + _OPTIONAL_FIELDS)})"
            )

        def fail(field: str, value: Any, expected: str) -> ConfigError:
            return ConfigError(f"{source}: field {field} is {value!r}, expected {expected}")

        def text(field: str) -> str:
            value = data[field]
            if not isinstance(value, str) or not value:
                raise fail(field, value, "a non-empty string")
            return value

        def count(field: str, minimum: int) -> int:
            value = data[field]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise fail(field, value, f"an integer >= {minimum}")
            return value

        def texts(field: str) -> tuple[str, ...]:
            value = data[field]
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise fail(field, value, "a list of non-empty strings")
            return tuple(value)

        def optional_texts(field: str) -> tuple[str, ...]:
            return texts(field) if field in data else ()

        tee_types = texts("allowed_tee_types")
        for tee in tee_types:
            if tee not in KNOWN_TEE_TYPES:
                raise fail("allowed_tee_types", tee, f"one of {', '.join(KNOWN_TEE_TYPES)}")

        raw_measurements = data["measurements"]
        if raw_measurements is None:
            raw_measurements = {}
        if not isinstance(raw_measurements, dict):
            raise fail("measurements", raw_measurements, "a mapping of task name to a list of hex digests")
        measurements: dict[str, tuple[str, ...]] = {}
        for task, values in raw_measurements.items():
            values = [] if values is None else values
            if not isinstance(task, str) or not isinstance(values, list):
                raise fail(f"measurements.{task}", values, "a list of hex measurements")
            for value in values:
                if not isinstance(value, str) or not _HEX64.match(value):
                    raise fail(
                        f"measurements.{task}",
                        value,
                        "64 lowercase hex digits (run `databright enclave measure <task>`)",
                    )
            measurements[task] = tuple(values)

        product_ids = data["product_ids"]
        if product_ids is None:
            product_ids = []
        if not isinstance(product_ids, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in product_ids
        ):
            raise fail("product_ids", product_ids, "a list of non-negative integers")

        allow_debug = data["allow_debug"]
        if not isinstance(allow_debug, bool):
            raise fail("allow_debug", allow_debug, "true or false")

        statuses = texts("acceptable_tcb_statuses")
        for status in statuses:
            if status not in TCB_STATUSES:
                raise fail("acceptable_tcb_statuses", status, f"one of {', '.join(TCB_STATUSES)}")
        denied = optional_texts("denied_advisories")
        for advisory in denied:
            if not _ADVISORY.match(advisory):
                raise fail("denied_advisories", advisory, "an Intel advisory id like INTEL-SA-00615")

        return cls(
            name=text("name"),
            version=count("version", 1),
            allowed_tee_types=tee_types,
            measurements=measurements,
            signer_ids=texts("signer_ids"),
            product_ids=tuple(product_ids),
            min_svn=count("min_svn", 0),
            allow_debug=allow_debug,
            acceptable_tcb_statuses=statuses,
            result_lifetime_seconds=count("result_lifetime_seconds", 1),
            nonce_ttl_seconds=count("nonce_ttl_seconds", 1),
            denied_advisories=denied,
            hardware_identities=_hardware_identities(data.get("hardware_identities"), fail),
        )

    # --- views ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "allowed_tee_types": list(self.allowed_tee_types),
            "measurements": {task: list(values) for task, values in sorted(self.measurements.items())},
            "signer_ids": list(self.signer_ids),
            "product_ids": list(self.product_ids),
            "min_svn": self.min_svn,
            "allow_debug": self.allow_debug,
            "acceptable_tcb_statuses": list(self.acceptable_tcb_statuses),
            "result_lifetime_seconds": self.result_lifetime_seconds,
            "nonce_ttl_seconds": self.nonce_ttl_seconds,
            "denied_advisories": list(self.denied_advisories),
            "hardware_identities": {
                tee: identity.to_dict() for tee, identity in sorted(self.hardware_identities.items())
            },
        }

    @property
    def digest(self) -> str:
        """Hex sha256 of the canonical policy: two files that mean the same rules share a digest."""
        return digest_json(self.to_dict())

    def allowing(self, task: str, measurement: str) -> AttestationPolicy:
        """A copy that also allows ``measurement`` for ``task`` (e.g. after `enclave measure`)."""
        if not _HEX64.match(measurement):
            raise ConfigError(f"measurement {measurement!r} is not 64 lowercase hex digits")
        measurements = dict(self.measurements)
        current = measurements.get(task, ())
        if measurement not in current:
            measurements[task] = (*current, measurement)
        return dataclasses.replace(self, measurements=measurements)

    def identity_for(self, tee_type: str) -> HardwareIdentity | None:
        """The enclaves admitted from hardware ``tee_type``; ``None`` when the policy names none."""
        return self.hardware_identities.get(tee_type)

    def check_hardware(self, claims: VerifiedQuote, task: str) -> None:
        """Refuse verified hardware ``claims`` for ``task`` that these rules do not admit.

        Raises ``AttestationError`` with, in order: TEE_TYPE_NOT_ALLOWED, MEASUREMENT_NOT_ALLOWED,
        SIGNER_NOT_ALLOWED, SVN_TOO_LOW, DEBUG_NOT_ALLOWED, TCB_STATUS_NOT_ALLOWED, ADVISORY_DENIED.
        """
        tee = claims.tee_type
        named = f"policy {self.name!r} v{self.version}"
        if tee not in self.allowed_tee_types:
            raise AttestationError(
                "TEE_TYPE_NOT_ALLOWED",
                f"tee_type {tee!r} is not allowed by {named} (allowed: {list(self.allowed_tee_types)}); "
                "add it to allowed_tee_types if this exchange accepts such workers",
            )
        identity = self.identity_for(tee)
        measurement = claims.measurement
        what = "MRENCLAVE" if tee == "sgx-dcap" else "tdx_measurement(MRTD, RTMR0..3)"
        allowed = None if identity is None else identity.measurements.get(task)
        if identity is None or not allowed:
            section = f"hardware_identities.{tee}.measurements.{task}"
            raise AttestationError(
                "MEASUREMENT_NOT_ALLOWED",
                f"{named} allows no {tee} measurement of task {task!r} (no {section}); got {what} "
                f"{measurement} — add it to {section} if this is the task's build",
                measurement=measurement,
            )
        if measurement not in allowed:
            raise AttestationError(
                "MEASUREMENT_NOT_ALLOWED",
                f"{what} {measurement} of task {task!r} is not allowed by {named} "
                f"(allowed: {list(allowed)}); the enclave runs different code — redeploy the task, "
                "or add the new build to the policy",
                measurement=measurement,
            )
        signer = "MRSIGNER" if tee == "sgx-dcap" else "MROWNER"
        if claims.signer_id not in identity.signer_ids:
            raise AttestationError(
                "SIGNER_NOT_ALLOWED",
                f"{signer} {claims.signer_id} is not in hardware_identities.{tee}.signer_ids of {named} "
                f"({list(identity.signer_ids)}); sign the enclave with an allowed key or add the signer",
            )
        if claims.product_id not in identity.product_ids:
            raise AttestationError(
                "SIGNER_NOT_ALLOWED",
                f"product id {claims.product_id} is not in hardware_identities.{tee}.product_ids "
                f"({list(identity.product_ids)}); build the enclave with an allowed product id",
            )
        if claims.svn < identity.min_svn:
            raise AttestationError(
                "SVN_TOO_LOW",
                f"enclave svn {claims.svn} is below hardware_identities.{tee}.min_svn {identity.min_svn}; "
                "deploy the patched task version",
            )
        if claims.debug and not self.allow_debug:
            raise AttestationError(
                "DEBUG_NOT_ALLOWED",
                "the quote is from a debug enclave, whose memory the host can read; start it without debug",
            )
        if claims.tcb_status not in self.acceptable_tcb_statuses:
            raise AttestationError(
                "TCB_STATUS_NOT_ALLOWED",
                f"the platform's TCB status is {claims.tcb_status!r} "
                f"(advisories: {list(claims.advisory_ids)}), not in acceptable_tcb_statuses "
                f"{list(self.acceptable_tcb_statuses)} of {named}; the provider must update BIOS/microcode "
                "and platform configuration, or the policy must accept that status",
                tcb_status=claims.tcb_status,
            )
        denied = sorted(set(claims.advisory_ids) & set(self.denied_advisories))
        if denied:
            raise AttestationError(
                "ADVISORY_DENIED",
                f"advisories {denied} apply to the platform (TCB status {claims.tcb_status!r}) and are in "
                f"denied_advisories of {named}; the provider must patch the platform against them",
                advisories=denied,
            )

    def dump(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path


def _hardware_identities(
    raw: Any, fail: Callable[[str, Any, str], ConfigError]
) -> dict[str, HardwareIdentity]:
    """Parse the ``hardware_identities`` section; ``fail(field, value, expected)`` makes the error."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail("hardware_identities", raw, "a mapping of hardware tee type to its allowed identities")
    out: dict[str, HardwareIdentity] = {}
    for tee, section in raw.items():
        where = f"hardware_identities.{tee}"
        if tee not in HARDWARE_TEE_TYPES:
            raise fail("hardware_identities", tee, f"a hardware tee type: {', '.join(HARDWARE_TEE_TYPES)}")
        if not isinstance(section, dict):
            raise fail(where, section, "a mapping with measurements, signer_ids, product_ids, min_svn")
        keys = ("measurements", "signer_ids", "product_ids", "min_svn")
        if set(section) != set(keys):
            raise fail(where, sorted(map(str, section)), f"exactly the keys {', '.join(keys)}")

        raw_measurements = section["measurements"] or {}
        if not isinstance(raw_measurements, dict):
            raise fail(f"{where}.measurements", raw_measurements, "a mapping of task name to hex digests")
        measurements: dict[str, tuple[str, ...]] = {}
        for task, values in raw_measurements.items():
            values = [] if values is None else values
            if not isinstance(task, str) or not isinstance(values, list):
                raise fail(f"{where}.measurements.{task}", values, "a list of hex measurements")
            for value in values:
                if not isinstance(value, str) or not _HEX64.match(value):
                    hint = "MRENCLAVE" if tee == "sgx-dcap" else "tdx_measurement(MRTD, RTMR0..3)"
                    raise fail(f"{where}.measurements.{task}", value, f"64 lowercase hex digits ({hint})")
            measurements[task] = tuple(values)

        digits = _SIGNER_HEX_DIGITS[tee]
        signers = section["signer_ids"] or []
        if not isinstance(signers, list) or not all(
            isinstance(v, str) and re.fullmatch(f"[0-9a-f]{{{digits}}}", v) for v in signers
        ):
            what = "MRSIGNER" if tee == "sgx-dcap" else "MROWNER"
            raise fail(
                f"{where}.signer_ids", signers, f"a list of {what} values, {digits} lowercase hex digits"
            )

        products = section["product_ids"] or []
        if not isinstance(products, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_U16 for v in products
        ):
            raise fail(f"{where}.product_ids", products, f"a list of integers in 0..{_MAX_U16}")

        min_svn = section["min_svn"]
        if isinstance(min_svn, bool) or not isinstance(min_svn, int) or not 0 <= min_svn <= _MAX_U16:
            raise fail(f"{where}.min_svn", min_svn, f"an integer in 0..{_MAX_U16}")
        out[tee] = HardwareIdentity(measurements, tuple(signers), tuple(products), min_svn)
    return out


def production_policy(dev: AttestationPolicy) -> AttestationPolicy:
    """The production twin of a development policy: hardware tee types only, never debug.

    Measurements, signers, hardware identities, the advisory deny-list and lifetimes carry over, so
    the same task versions are admitted — but only from real TEEs at TCB level ``UpToDate``;
    simulated evidence fails with ``TEE_TYPE_NOT_ALLOWED``.
    """
    statuses = tuple(s for s in dev.acceptable_tcb_statuses if s == "UpToDate") or ("UpToDate",)
    return dataclasses.replace(
        dev,
        name=f"{dev.name}-production" if not dev.name.endswith("-production") else dev.name,
        allowed_tee_types=HARDWARE_TEE_TYPES,
        allow_debug=False,
        acceptable_tcb_statuses=statuses,
    )
