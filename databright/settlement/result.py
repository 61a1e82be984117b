"""``Settlement``: the one result object of a period's settlement, from claim to statements."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from databright.errors import SettlementError
from databright.settlement.allocation import Allocation, SettledJob
from databright.settlement.policy import AllocationPolicy

if TYPE_CHECKING:
    import pandas as pd

_PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


def check_period(period: str) -> str:
    """Periods are calendar months written ``YYYY-MM``; they also name statement folders."""
    if not isinstance(period, str) or not _PERIOD.match(period):
        raise SettlementError(f"period {period!r} is not a month; write it as YYYY-MM, e.g. 2026-11")
    return period


@dataclass(frozen=True)
class Settlement:
    period: str
    state: str
    inputs_digest: str
    policy_version: int
    policy_digest: str
    allocation_root: str
    assurance: str  # "simulated" when any receipt was simulated, else "hardware"
    approver: str | None
    allocations: tuple[Allocation, ...]
    totals: Mapping[str, int]  # minor units per holder account over the period
    jobs: tuple[SettledJob, ...] = field(repr=False)
    policy: AllocationPolicy = field(repr=False)

    @property
    def settlement_id(self) -> str:
        return f"settlement:{self.period}"

    @property
    def total_paid(self) -> int:
        return sum(job.payment for job in self.jobs)

    def allocations_for(self, holder: str) -> tuple[Allocation, ...]:
        return tuple(a for a in self.allocations if a.holder == holder)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per allocation; ``amount`` and ``weight`` hold the exact Python ints."""
        import pandas as pd

        columns = ["period", "job_id", "holder", "role", "basis", "weight", "amount"]
        frame = pd.DataFrame([a.to_dict() for a in self.allocations], columns=columns)
        # object dtype keeps arbitrary-size ints exact; int64 would overflow past 9.2e18 minor units.
        for column in ("weight", "amount"):
            frame[column] = pd.Series([getattr(a, column) for a in self.allocations], dtype=object)
        return frame

    def summary(self) -> str:
        fmt = self.policy.format_amount
        lines = [
            f"settlement {self.period}: {self.state}, {len(self.jobs)} job(s), {fmt(self.total_paid)} paid, "
            f"policy {self.policy.label}, assurance: {self.assurance}",
            f"inputs {self.inputs_digest}  allocation root {self.allocation_root}",
        ]
        lines += [f"  {holder:<32} {fmt(amount):>24}" for holder, amount in self.totals.items()]
        return "\n".join(lines)
