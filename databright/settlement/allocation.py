"""Per-job allocation: who receives which part of one job's payment, and why.

The payment splits by the policy into data, compute and fee parts (largest remainder over basis
points). The data part is split among the dataset's owners in proportion to the quantized value of
their records for this job, as signed by the attested value task in the job's valuation receipt
(the usage receipt says who was read and how often, not what it was worth); if no owner has a
positive value, it is
split by rows used instead, and the allocation's ``basis`` says which. The compute part goes to the
provider whose attested worker ran the job; the fee to ``exchange_fee``.

Settlement code sees receipts only through ``ReceiptLike``, the fields of
``databright.trust.receipts.UsageReceipt`` that it reads, so it stays independent of how receipts
are parsed and verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from databright.crypto import canonical_json, merkle_root_hex
from databright.errors import DatabrightError, SettlementError
from databright.ledger.accounts import EXCHANGE_FEE, contributor_account, provider_account
from databright.settlement.policy import AllocationPolicy
from databright.settlement.rounding import largest_remainder
from databright.valuation.quantize import quantize_weights

# --- what settlement reads from a verified usage receipt -----------------------------------------


class OwnerUsageLike(Protocol):
    @property
    def rows_used(self) -> int: ...
    @property
    def visits(self) -> int: ...


class ReceiptLike(Protocol):
    @property
    def period(self) -> str: ...
    @property
    def job_id(self) -> str: ...
    @property
    def provider_id(self) -> str: ...
    @property
    def attestation_result_id(self) -> str: ...
    @property
    def assurance(self) -> str: ...
    @property
    def dataset(self) -> str: ...
    @property
    def dataset_version(self) -> int: ...
    @property
    def dataset_merkle_root(self) -> str: ...
    @property
    def owners(self) -> Mapping[str, OwnerUsageLike]: ...
    @property
    def records_root(self) -> str: ...
    @property
    def work_units(self) -> int: ...
    @property
    def model_digest(self) -> str: ...


# --- the facts a settlement keeps per job ---------------------------------------------------------


@dataclass(frozen=True)
class OwnerLine:
    """One owner's use in one job (usage receipt), value (valuation receipt) and the weight it earned."""

    owner: str
    rows_used: int
    visits: int
    value: float
    weight: int


@dataclass(frozen=True)
class SettledJob:
    job_id: str
    trainer_id: str
    provider_id: str
    payment: int
    dataset: str
    dataset_version: int
    dataset_merkle_root: str
    records_root: str
    work_units: int
    assurance: str
    attestation_result_id: str
    receipt_digest: str
    valuation_receipt_digest: str
    owners: tuple[OwnerLine, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Allocation:
    """One holder's part of one job's payment."""

    period: str
    job_id: str
    holder: str  # ledger account id
    role: str  # data | compute | fee
    basis: str  # value | rows_used | work_units | policy
    weight: int
    amount: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def settled_job(
    *,
    job_id: str,
    trainer_id: str,
    provider_id: str,
    payment: int,
    receipt: ReceiptLike,
    receipt_digest: str,
    values: Mapping[str, float],
    valuation_receipt_digest: str,
) -> SettledJob:
    """Bind a job row to its verified usage receipt and its owners' signed ``values`` (from the
    valuation receipt whose envelope digest is ``valuation_receipt_digest``), quantizing the values
    to weights (once, here)."""
    owners = dict(receipt.owners)
    if not owners:
        raise SettlementError(
            f"job {job_id}: its usage receipt names no data owners, so there is no one to pay the data "
            "share to; the receipt must list the owners whose rows were used",
            job_id=job_id,
        )
    if sorted(values) != sorted(owners):
        raise SettlementError(
            f"job {job_id}: the valuation values owners {sorted(values)}, the usage receipt names "
            f"{sorted(owners)}; value the job again so both describe the same records",
            job_id=job_id,
        )
    try:
        weights = quantize_weights(dict(values))
    except DatabrightError as exc:
        raise SettlementError(
            f"job {job_id}: owner values in the valuation receipt cannot be weighted: {exc}", job_id=job_id
        ) from exc
    lines = []
    for owner in sorted(owners):
        usage = owners[owner]
        contributor_account(owner)  # refuses owner ids that cannot name an account, before posting
        for what in ("rows_used", "visits"):
            number = getattr(usage, what)
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise SettlementError(
                    f"job {job_id}: owner {owner!r} has {what} = {number!r}; expected an int >= 0",
                    job_id=job_id,
                )
        lines.append(OwnerLine(owner, usage.rows_used, usage.visits, float(values[owner]), weights[owner]))
    return SettledJob(
        job_id=job_id,
        trainer_id=trainer_id,
        provider_id=provider_id,
        payment=payment,
        dataset=receipt.dataset,
        dataset_version=int(receipt.dataset_version),
        dataset_merkle_root=receipt.dataset_merkle_root,
        records_root=receipt.records_root,
        work_units=int(receipt.work_units),
        assurance=receipt.assurance,
        attestation_result_id=receipt.attestation_result_id,
        receipt_digest=receipt_digest,
        valuation_receipt_digest=valuation_receipt_digest,
        owners=tuple(lines),
    )


def allocate_job(policy: AllocationPolicy, period: str, job: SettledJob) -> list[Allocation]:
    """The allocation rows of one job: data per owner, compute to the provider, the fee."""
    split = policy.split_payment(job.payment)
    by_value = {contributor_account(o.owner): o.weight for o in job.owners}
    if sum(by_value.values()) > 0:
        basis, weights = "value", by_value
    else:
        basis, weights = "rows_used", {contributor_account(o.owner): o.rows_used for o in job.owners}
        if sum(weights.values()) == 0:
            raise SettlementError(
                f"job {job.job_id}: every owner has zero value and zero rows used, so its data share "
                f"of {split['data']} minor units has no basis; the receipt must record the rows used",
                job_id=job.job_id,
            )
    rows = [
        Allocation(period, job.job_id, holder, "data", basis, weights[holder], amount)
        for holder, amount in largest_remainder(split["data"], weights).items()
    ]
    rows.append(
        Allocation(
            period,
            job.job_id,
            provider_account(job.provider_id),
            "compute",
            "work_units",
            job.work_units,
            split["compute"],
        )
    )
    rows.append(Allocation(period, job.job_id, EXCHANGE_FEE, "fee", "policy", policy.fee_bps, split["fee"]))
    return rows


def sort_allocations(rows: list[Allocation]) -> list[Allocation]:
    order = {"data": 0, "compute": 1, "fee": 2}
    return sorted(rows, key=lambda a: (a.job_id, order[a.role], a.holder))


def allocation_root(rows: list[Allocation]) -> str:
    """RFC 6962 Merkle root over the canonical JSON of the rows, in settlement order."""
    return merkle_root_hex([canonical_json(a.to_dict()) for a in sort_allocations(rows)])
