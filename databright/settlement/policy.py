"""The allocation policy: how a job's payment divides into data, compute and fee shares.

The policy is versioned and digested: the digest of its canonical JSON goes into every
settlement's inputs digest, so a period settled under one policy can never be silently re-settled
under another. Shares are basis points that must add up to 10 000; the split of a payment uses
largest remainder over those basis points, so it is exact in integer minor units.
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


@dataclass(frozen=True)
class AllocationPolicy:
    name: str
    version: int
    data_share_bps: int = 7000
    compute_share_bps: int = 2000
    fee_bps: int = 1000
    currency: str = "DBX"
    minor_units_per_unit: int = 1_000_000

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"allocation policy name {self.name!r} is empty; give the policy a name")
        numbers = ("version", "data_share_bps", "compute_share_bps", "fee_bps", "minor_units_per_unit")
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
        return asdict(self)

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

    @property
    def decimals(self) -> int:
        return len(str(self.minor_units_per_unit)) - 1

    def format_amount(self, minor: int) -> str:
        """``1234567`` -> ``"1.234567 DBX"``: decimal text made from the int, never through a float."""
        return format_amount(minor, self.currency, self.minor_units_per_unit)
