"""The appraisal policy: what evidence the exchange accepts, as one versioned, digestible file.

A policy names the tee types it trusts, the allowed measurement of each enclave task, the allowed
signers and products, the minimum security version, whether debug enclaves pass (never in
production), the TCB statuses accepted from hardware collateral, how long a result stays valid and
how long a nonce may wait. Its ``digest`` is written into every attestation result, so a result
always says which rules admitted it.

``policies/attestation.yaml`` is the development policy (it allows ``simulated``);
``production_policy(dev)`` derives the production one, which refuses it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from databright.crypto import digest_json
from databright.errors import ConfigError
from databright.trust.evidence import HARDWARE_TEE_TYPES, KNOWN_TEE_TYPES

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
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
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigError(
                f"{source} has unknown field(s) {', '.join(map(str, unknown))}; check the spelling "
                f"(fields: {', '.join(_FIELDS)})"
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

        return cls(
            name=text("name"),
            version=count("version", 1),
            allowed_tee_types=tee_types,
            measurements=measurements,
            signer_ids=texts("signer_ids"),
            product_ids=tuple(product_ids),
            min_svn=count("min_svn", 0),
            allow_debug=allow_debug,
            acceptable_tcb_statuses=texts("acceptable_tcb_statuses"),
            result_lifetime_seconds=count("result_lifetime_seconds", 1),
            nonce_ttl_seconds=count("nonce_ttl_seconds", 1),
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

    def dump(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path


def production_policy(dev: AttestationPolicy) -> AttestationPolicy:
    """The production twin of a development policy: hardware tee types only, never debug.

    Measurements, signers and lifetimes carry over, so the same task versions are admitted — but
    only from real TEEs; simulated evidence fails with ``TEE_TYPE_NOT_ALLOWED``.
    """
    statuses = tuple(s for s in dev.acceptable_tcb_statuses if s == "UpToDate") or ("UpToDate",)
    return dataclasses.replace(
        dev,
        name=f"{dev.name}-production" if not dev.name.endswith("-production") else dev.name,
        allowed_tee_types=HARDWARE_TEE_TYPES,
        allow_debug=False,
        acceptable_tcb_statuses=statuses,
    )
