"""The allocation policy: how a job's payment divides into data, compute and fee shares.

The policy is versioned and digested: the digest of its canonical JSON goes into every
settlement's inputs digest, so a period settled under one policy can never be silently re-settled
under another. Shares are basis points that must add up to 10 000; the split of a payment uses
largest remainder over those basis points, so it is exact in integer minor units.

Version 2 keys (``policies/allocation.v2.example.yaml``), both 0 by default:

* ``usage_floor_bps`` — that part of each job's data share is split by rows used and only the rest
  by value (``split_data``), so data that was used never earns exactly zero through valuation noise.
* ``minimum_payout`` — minor units; a holder whose period total plus what was carried in stays below
  it is not paid this period and the amount is carried over
  (:func:`databright.settlement.allocation.apply_minimum_payout`).

A key at its default is left out of ``to_dict`` and so of the digest: a v1 file means exactly what it
meant before these keys existed, and keeps the digest (and the settled periods) it had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from databright.crypto import digest_json
from databright.errors import ConfigError
from databright.money import format_amount
from databright.settlement.rounding import largest_remainder

TOTAL_BPS = 10_000

#: The three parts of every payment, in the order they are posted and shown.
ROLES = ("data", "compute", "fee")

#: Keys added after v1 and their defaults; at the default they are left out of the digest.
V2_DEFAULTS: dict[str, int] = {"usage_floor_bps": 0, "minimum_payout": 0}


@dataclass(frozen=True)
class AllocationPolicy:
    name: str
    version: int
    data_share_bps: int = 7000
    compute_share_bps: int = 2000
    fee_bps: int = 1000
    currency: str = "DBX"
    minor_units_per_unit: int = 1_000_000
    usage_floor_bps: int = 0
    minimum_payout: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"allocation policy name {self.name!r} is empty; give the policy a name")
        numbers = (
            "version",
            "data_share_bps",
            "compute_share_bps",
            "fee_bps",
            "minor_units_per_unit",
            *V2_DEFAULTS,
        )
        for field_name in numbers:
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"allocation policy {self.name!r}: {field_name} = {value!r} must be a non-negative int"
                )
        shares = self.data_share_bps + self.compute_share_bps + self.fee_bps
        if shares != TOTAL_BPS:
            raise ConfigError(
                f"allocation policy {self.name!r}: data_share_bps {self.data_share_bps} + compute_share_bps "
                f"{self.compute_share_bps} + fee_bps {self.fee_bps} = {shares}, but the shares must sum to "
                f"{TOTAL_BPS} (100%); adjust one of them"
            )
        if self.minor_units_per_unit < 1 or str(self.minor_units_per_unit).rstrip("0") != "1":
            raise ConfigError(
                f"allocation policy {self.name!r}: minor_units_per_unit = {self.minor_units_per_unit} "
                "must be a power of ten (1, 100, 1000000, ...) so amounts print as exact decimals"
            )
        if self.usage_floor_bps > TOTAL_BPS:
            raise ConfigError(
                f"allocation policy {self.name!r}: usage_floor_bps = {self.usage_floor_bps} is more than "
                f"{TOTAL_BPS} (all of the data share); use 0 (pay by value only) up to {TOTAL_BPS} "
                "(pay by rows used only)"
            )
        if not isinstance(self.currency, str) or not self.currency.isalnum():
            raise ConfigError(f"allocation policy {self.name!r}: currency {self.currency!r} is not a label")

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "policy") -> AllocationPolicy:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown allocation policy keys {unknown}; known keys: {sorted(known)}"
            )
        missing = sorted({"name", "version"} - set(data))
        if missing:
            raise ConfigError(
                f"{source}: allocation policy lacks {missing}; every policy is named and versioned"
            )
        return cls(**dict(data))

    @classmethod
    def load(cls, path: Path) -> AllocationPolicy:
        """Read a policy file such as ``policies/allocation.yaml``."""
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"allocation policy {path} does not exist; restore policies/allocation.yaml"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"allocation policy {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"allocation policy {path} must be a mapping of keys, got {type(data).__name__}"
            )
        return cls.from_mapping(data, source=str(path))

    # --- identity ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The policy's keys; v2 keys at their default (0) are left out so v1 digests never move."""
        data = asdict(self)
        for key, default in V2_DEFAULTS.items():
            if data[key] == default:
                del data[key]
        return data

    @property
    def digest(self) -> str:
        """Hex sha256 of the policy's canonical JSON."""
        return digest_json(self.to_dict())

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    # --- money ------------------------------------------------------------------------------------
    def split_payment(self, payment: int) -> dict[str, int]:
        """A payment's data, compute and fee parts: exact, each the floor or ceiling of its share."""
        return largest_remainder(
            payment,
            {"data": self.data_share_bps, "compute": self.compute_share_bps, "fee": self.fee_bps},
        )

    def split_data(self, data_share: int) -> dict[str, int]:
        """A data share's ``usage_floor`` part (split by rows used) and ``value`` part (split by value).

        Largest remainder over ``usage_floor_bps`` and the rest of 10 000, so the two add up to the
        data share exactly; at ``usage_floor_bps = 0`` the value part is the whole share.
        """
        return largest_remainder(
            data_share, {"usage_floor": self.usage_floor_bps, "value": TOTAL_BPS - self.usage_floor_bps}
        )

    @property
    def decimals(self) -> int:
        return len(str(self.minor_units_per_unit)) - 1

    def format_amount(self, minor: int) -> str:
        """``1234567`` -> ``"1.234567 DBX"``: decimal text made from the int, never through a float."""
        return format_amount(minor, self.currency, self.minor_units_per_unit)
