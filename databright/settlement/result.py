"""A period's result objects: the ``Proposal`` finance reviews, and the ``Settlement`` that was posted.

Both carry the same verified facts (jobs, allocations, totals, digests) and the same review figures
(``pools()``, ``datasets()``, ``holders()``, ``chart_png()``), so the review artifacts published
before approval and the statements written after posting are computed from one set of numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from databright.errors import SettlementError
from databright.settlement.allocation import Allocation, SettledJob
from databright.settlement.policy import AllocationPolicy

if TYPE_CHECKING:
    import pandas as pd

_PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
ROLES = ("data", "compute", "fee")


def check_period(period: str) -> str:
    """Periods are calendar months written ``YYYY-MM``; they also name statement folders."""
    if not isinstance(period, str) or not _PERIOD.match(period):
        raise SettlementError(f"period {period!r} is not a month; write it as YYYY-MM, e.g. 2026-11")
    return period


def percent(part: int, whole: int) -> str:
    """``part / whole`` as a percentage with two decimals, by integer arithmetic (money is never a float)."""
    if whole <= 0:
        return "-"
    hundredths = (part * 10_000 + whole // 2) // whole
    return f"{hundredths // 100}.{hundredths % 100:02d} %"


@dataclass(frozen=True)
class DatasetLine:
    """What one dataset version earned this period, over every job that read it."""

    dataset: str
    version: int
    jobs: int
    owners: int
    rows_used: int
    visits: int
    payment: int  # what the jobs that read it paid, in minor units
    data: int  # the data pool of those jobs: paid to the dataset's owners
    compute: int
    fee: int


@dataclass(frozen=True)
class CarryLine:
    """One holder's carry-over in a period, under the policy's minimum payout (minor units).

    ``released``: what earlier periods carried for them and this period pays out, because their due
    reached the minimum. ``carried_over``: what they earned this period but is held in their
    carry-over account for a later period, because their due stayed below it.
    """

    holder: str
    released: int
    carried_over: int


@dataclass(frozen=True)
class HolderLine:
    """One account's payout this period, over every job and role."""

    holder: str
    roles: tuple[str, ...]
    jobs: int
    amount: int


class PeriodFigures:
    """The review figures of a period, shared by ``Proposal`` and ``Settlement``."""

    period: str
    state: str
    assurance: str
    inputs_digest: str
    allocation_root: str
    allocations: tuple[Allocation, ...]
    totals: Mapping[str, int]
    jobs: tuple[SettledJob, ...]
    policy: AllocationPolicy
    carry: Mapping[str, CarryLine]

    @property
    def settlement_id(self) -> str:
        return f"settlement:{self.period}"

    @property
    def total_paid(self) -> int:
        return sum(job.payment for job in self.jobs)

    def allocations_for(self, holder: str) -> tuple[Allocation, ...]:
        return tuple(a for a in self.allocations if a.holder == holder)

    def pools(self) -> dict[str, int]:
        """Minor units per role (``data``, ``compute``, ``fee``); they sum to ``total_paid``."""
        pools = dict.fromkeys(ROLES, 0)
        for a in self.allocations:
            pools[a.role] = pools.get(a.role, 0) + a.amount
        return pools

    def datasets(self) -> tuple[DatasetLine, ...]:
        """Every dataset version used this period, by name then version."""
        by_job: dict[str, dict[str, int]] = {}
        for a in self.allocations:
            job_parts = by_job.setdefault(a.job_id, dict.fromkeys(ROLES, 0))
            job_parts[a.role] = job_parts.get(a.role, 0) + a.amount
        grouped: dict[tuple[str, int], list[SettledJob]] = {}
        for job in self.jobs:
            grouped.setdefault((job.dataset, job.dataset_version), []).append(job)
        lines = []
        for (dataset, version), jobs in sorted(grouped.items()):
            parts = [by_job.get(j.job_id, dict.fromkeys(ROLES, 0)) for j in jobs]
            lines.append(
                DatasetLine(
                    dataset=dataset,
                    version=version,
                    jobs=len(jobs),
                    owners=len({o.owner for j in jobs for o in j.owners}),
                    rows_used=sum(o.rows_used for j in jobs for o in j.owners),
                    visits=sum(o.visits for j in jobs for o in j.owners),
                    payment=sum(j.payment for j in jobs),
                    data=sum(p["data"] for p in parts),
                    compute=sum(p["compute"] for p in parts),
                    fee=sum(p["fee"] for p in parts),
                )
            )
        return tuple(lines)

    def holders(self) -> tuple[HolderLine, ...]:
        """Every account paid this period, largest payout first (ties by account id)."""
        roles: dict[str, set[str]] = {}
        jobs: dict[str, set[str]] = {}
        for a in self.allocations:
            roles.setdefault(a.holder, set()).add(a.role)
            jobs.setdefault(a.holder, set()).add(a.job_id)
        lines = [
            HolderLine(
                holder,
                tuple(r for r in ROLES if r in roles.get(holder, ())),
                len(jobs.get(holder, ())),
                amount,
            )
            for holder, amount in self.totals.items()
        ]
        return tuple(sorted(lines, key=lambda line: (-line.amount, line.holder)))

    # --- review renderings (the Prefect artifacts and the terminal) --------------------------------

    def holder_rows(self, top: int | None = None) -> list[dict[str, str]]:
        """The ``top`` holders (all when None) as table rows of text; amounts formatted from ints."""
        fmt, whole = self.policy.format_amount, self.total_paid
        lines = self.holders() if top is None else self.holders()[:top]
        return [
            {
                "rank": str(rank),
                "holder": line.holder,
                "roles": ", ".join(line.roles),
                "jobs": str(line.jobs),
                "amount": fmt(line.amount),
                "share of revenue": percent(line.amount, whole),
            }
            for rank, line in enumerate(lines, start=1)
        ]

    def dataset_rows(self) -> list[dict[str, str]]:
        fmt = self.policy.format_amount
        return [
            {
                "dataset": line.dataset,
                "version": f"v{line.version}",
                "jobs": str(line.jobs),
                "owners": str(line.owners),
                "rows used": f"{line.rows_used:,}",
                "visits": f"{line.visits:,}",
                "revenue": fmt(line.payment),
                "data pool (to owners)": fmt(line.data),
                "compute pool": fmt(line.compute),
                "exchange fee": fmt(line.fee),
            }
            for line in self.datasets()
        ]

    def summary_markdown(self) -> str:
        """Period, jobs, revenue, pools and assurance, as the markdown the reviewer reads first."""
        fmt, whole, pools = self.policy.format_amount, self.total_paid, self.pools()
        trainers = sorted({j.trainer_id for j in self.jobs})
        providers = sorted({j.provider_id for j in self.jobs})
        warning = (
            " — receipts rest on **simulated** attestation, not hardware"
            if self.assurance != "hardware"
            else " — every receipt rests on hardware attestation"
        )
        rows = [
            ("period", self.period),
            ("state", f"**{self.state}**"),
            (
                "jobs",
                f"{len(self.jobs)} (trainers: {', '.join(trainers)}; providers: {', '.join(providers)})",
            ),
            ("revenue", fmt(whole)),
            ("data pool", f"{fmt(pools['data'])} ({percent(pools['data'], whole)})"),
            ("compute pool", f"{fmt(pools['compute'])} ({percent(pools['compute'], whole)})"),
            ("exchange fee", f"{fmt(pools['fee'])} ({percent(pools['fee'], whole)})"),
            ("accounts paid", str(len(self.totals))),
            *self._carry_rows(),
            ("datasets", str(len(self.datasets()))),
            ("assurance", f"**{self.assurance}**{warning}"),
            ("policy", self.policy.label),
            ("inputs digest", f"`{self.inputs_digest}`"),
            ("allocation root", f"`{self.allocation_root}`"),
        ]
        table = "\n".join(f"| {name} | {value} |" for name, value in rows)
        return f"### Settlement {self.period}: {self.state}\n\n| | |\n|---|---|\n{table}\n"

    def _carry_rows(self) -> list[tuple[str, str]]:
        """Summary rows for the minimum payout: what stays carried, what earlier periods release."""
        if not self.carry and not self.policy.minimum_payout:
            return []
        fmt = self.policy.format_amount
        out = [c for c in self.carry.values() if c.carried_over]
        back = [c for c in self.carry.values() if c.released]
        return [
            ("minimum payout", fmt(self.policy.minimum_payout)),
            (
                "carried to a later period",
                f"{fmt(sum(c.carried_over for c in out))} of {len(out)} holder(s) below the minimum",
            ),
            (
                "released from earlier periods",
                f"{fmt(sum(c.released for c in back))} to {len(back)} holder(s) now at or above it",
            ),
        ]

    def chart_png(self) -> bytes:
        """A PNG: the distribution of signed per-owner values, and the payout of each dataset by pool."""
        import io

        from matplotlib.figure import Figure  # a bare Figure needs no pyplot state, so threads are safe

        figure = Figure(figsize=(10, 3.8), dpi=90, layout="constrained")
        values_axes, payout_axes = figure.subplots(1, 2)
        values = [o.value for j in self.jobs for o in j.owners]
        values_axes.hist(values, bins=max(5, min(30, len(values))), color="#4c72b0")
        values_axes.set_title(f"Signed value per owner and job ({len(values)})")
        values_axes.set_xlabel("value (valuation receipt)")
        values_axes.set_ylabel("owners")

        lines = self.datasets()
        labels = [f"{line.dataset}@v{line.version}" for line in lines]
        unit = self.policy.minor_units_per_unit
        left = [0.0] * len(lines)
        for role, colour in zip(ROLES, ("#55a868", "#dd8452", "#8172b3"), strict=True):
            # Bar lengths only: the exact amounts are in the tables next to this chart.
            widths = [getattr(line, role) / unit for line in lines]
            payout_axes.barh(labels, widths, left=left, color=colour, label=role)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        payout_axes.set_title("Payout by dataset")
        payout_axes.set_xlabel(self.policy.currency)
        payout_axes.legend(loc="lower right")
        out = io.BytesIO()
        figure.savefig(out, format="png", metadata={"Software": None})
        return out.getvalue()


@dataclass(frozen=True)
class Proposal(PeriodFigures):
    """What a period would pay, before anyone approved it: the object finance reviews.

    ``state`` is the period's state when the proposal was read: ``proposed`` (awaiting review),
    ``approved`` (approved, not yet posted) or ``posted`` (already final; the figures are the posted ones).
    """

    period: str
    state: str
    inputs_digest: str
    policy_version: int
    policy_digest: str
    allocation_root: str
    assurance: str
    approver: str | None
    reason: str | None
    allocations: tuple[Allocation, ...]
    totals: Mapping[str, int]
    jobs: tuple[SettledJob, ...] = field(repr=False)
    policy: AllocationPolicy = field(repr=False)
    carry: Mapping[str, CarryLine] = field(default_factory=dict, repr=False)

    def as_settlement(self, *, state: str | None = None, approver: str | None = None) -> Settlement:
        """The same figures as a ``Settlement`` (e.g. of a rejected period, for one rendering path)."""
        return Settlement(
            period=self.period,
            state=state or self.state,
            inputs_digest=self.inputs_digest,
            policy_version=self.policy_version,
            policy_digest=self.policy_digest,
            allocation_root=self.allocation_root,
            assurance=self.assurance,
            approver=approver if approver is not None else self.approver,
            allocations=self.allocations,
            totals=self.totals,
            jobs=self.jobs,
            policy=self.policy,
            carry=self.carry,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "state": self.state,
            "inputs_digest": self.inputs_digest,
            "policy_version": self.policy_version,
            "allocation_root": self.allocation_root,
            "assurance": self.assurance,
            "approver": self.approver,
            "reason": self.reason,
            "revenue": self.total_paid,
            "pools": self.pools(),
            "totals": dict(self.totals),
            "carry": {
                h: {"released": c.released, "carried_over": c.carried_over} for h, c in self.carry.items()
            },
        }


@dataclass(frozen=True)
class Settlement(PeriodFigures):
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
    carry: Mapping[str, CarryLine] = field(default_factory=dict, repr=False)  # holder -> carry-over

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
