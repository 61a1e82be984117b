"""Per-job allocation: who receives which part of one job's payment, and why; then the period's
minimum payout.

The payment splits by the policy into data, compute and fee parts (largest remainder over basis
points). The data part is split among the dataset's owners in proportion to the quantized value of
their records for this job, as signed by the attested value task in the job's valuation receipt
(the usage receipt says who was read and how often, not what it was worth); if no owner has a
positive value, it is split by rows used instead, and the allocation's ``basis`` says which. Values
are clipped at zero in one place only, ``databright.valuation.quantize.quantize_weights``.

Under a usage floor (policy ``usage_floor_bps`` > 0) the data part first splits into a
``usage_floor`` part, paid by rows used, and a ``value`` part paid as above, so every owner whose
rows were used gets two data rows, one per basis. At ``usage_floor_bps = 0`` there are no
``usage_floor`` rows and the rows are exactly those of policy v1. The compute part goes to the
provider whose attested worker ran the job; the fee to ``exchange_fee``.

Minimum payout works on the period's totals, not on jobs: ``apply_minimum_payout`` decides who is
paid and who is carried to the next period, and ``carry_over_moves`` names the ledger movements
(holder -> ``carry_over:<kind>.<id>`` and back) that record it.

Settlement code sees receipts only through ``ReceiptLike``, the fields of
``databright.trust.receipts.UsageReceipt`` that it reads, so it stays independent of how receipts
are parsed and verified.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from json.encoder import encode_basestring as _json_str  # the string encoder of ensure_ascii=False
from typing import Any, Protocol

from databright.crypto import canonical_json, merkle_root_hex
from databright.errors import DatabrightError, SettlementError
from databright.ledger.accounts import (
    EXCHANGE_FEE,
    carry_over_account,
    contributor_account,
    provider_account,
)
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
    basis: str  # usage_floor | value | rows_used | work_units | policy
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


def _usage_floor_rows(
    period: str, job: SettledJob, amount: int, rows_used: dict[str, int]
) -> tuple[list[Allocation], int]:
    """The ``usage_floor`` rows of a job, and what of ``amount`` they leave to the value part.

    With no rows used at all there is nothing to split the floor by: every owner gets a zero
    ``usage_floor`` row (so the statement still shows the basis) and the floor joins the value part.
    """
    if sum(rows_used.values()) == 0:
        parts, left = dict.fromkeys(rows_used, 0), amount
    else:
        parts, left = largest_remainder(amount, rows_used), 0
    rows = [
        Allocation(period, job.job_id, holder, "data", "usage_floor", rows_used[holder], part)
        for holder, part in parts.items()
    ]
    return rows, left


def allocate_job(policy: AllocationPolicy, period: str, job: SettledJob) -> list[Allocation]:
    """The allocation rows of one job: data per owner (usage floor, then value), compute to the
    provider, the fee. Each amount is the floor or ceiling of its exact share of its part."""
    split = policy.split_payment(job.payment)
    rows_used = {contributor_account(o.owner): o.rows_used for o in job.owners}
    by_value = {contributor_account(o.owner): o.weight for o in job.owners}
    rows: list[Allocation] = []
    value_part = split["data"]
    if policy.usage_floor_bps:
        data = policy.split_data(split["data"])
        rows, left = _usage_floor_rows(period, job, data["usage_floor"], rows_used)
        value_part = data["value"] + left
    if sum(by_value.values()) > 0:
        basis, weights = "value", by_value
    else:
        basis, weights = "rows_used", rows_used
        if sum(weights.values()) == 0:
            raise SettlementError(
                f"job {job.job_id}: every owner has zero value and zero rows used, so its data share "
                f"of {split['data']} minor units has no basis; the receipt must record the rows used",
                job_id=job.job_id,
            )
    rows += [
        Allocation(period, job.job_id, holder, "data", basis, weights[holder], amount)
        for holder, amount in largest_remainder(value_part, weights).items()
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
    # basis last: under a usage floor a holder has two data rows per job; under v1 (one row per
    # job, role and holder) it never decides, so v1 roots are unchanged.
    return sorted(rows, key=lambda a: (a.job_id, order[a.role], a.holder, a.basis))


def leaf_json(
    amount: int | str, basis: str, holder: str, job_id: str, period: str, role: str, weight: int | str
) -> bytes:
    """The canonical JSON of one allocation row from its fields, money as an int or its decimal text
    (the same JSON either way): keys sorted, ``json.dumps(ensure_ascii=False)``'s string escapes."""
    return (
        f'{{"amount":{amount},"basis":{_json_str(basis)},"holder":{_json_str(holder)},'
        f'"job_id":{_json_str(job_id)},"period":{_json_str(period)},"role":{_json_str(role)},'
        f'"weight":{weight}}}'
    ).encode()


def allocation_leaf(a: Allocation) -> bytes:
    """``canonical_json(a.to_dict())``, written out by ``leaf_json`` for the row's usual types.

    ``asdict`` and the generic encoder cost ~12 µs a row, most of a period's root; ``leaf_json`` is
    the same bytes at ~1 µs. Any other field type (a bool weight, say) takes the generic path, so the
    bytes never differ.
    """
    if (
        type(a.weight) is int
        and type(a.amount) is int
        and type(a.period) is str
        and type(a.job_id) is str
        and type(a.holder) is str
        and type(a.role) is str
        and type(a.basis) is str
    ):
        return leaf_json(a.amount, a.basis, a.holder, a.job_id, a.period, a.role, a.weight)
    return canonical_json(a.to_dict())


def allocation_root(rows: list[Allocation]) -> str:
    """RFC 6962 Merkle root over the canonical JSON of the rows, in settlement order."""
    return merkle_root_hex([allocation_leaf(a) for a in sort_allocations(rows)])


# --- the period's payouts: minimum payout and carry-over ------------------------------------------


def payout_totals(allocations: Iterable[Allocation]) -> dict[str, int]:
    """What each paid holder earned in the period (data and compute rows; the fee is the exchange's
    own and never held back), by holder account id, sorted, zero totals left out."""
    totals: dict[str, int] = {}
    for a in allocations:
        if a.role != "fee" and a.amount:
            totals[a.holder] = totals.get(a.holder, 0) + a.amount
    return dict(sorted(totals.items()))


def _amounts(amounts: Mapping[str, int], what: str) -> dict[str, int]:
    checked: dict[str, int] = {}
    for holder, amount in amounts.items():
        if not isinstance(holder, str) or not holder:
            raise SettlementError(f"{what}: holder {holder!r} is not an account id string")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise SettlementError(
                f"{what}: {holder!r} has {amount!r}; amounts are ints of minor units >= 0 (never floats)"
            )
        checked[holder] = amount
    return checked


def apply_minimum_payout(
    totals_by_holder: Mapping[str, int], carried_in: Mapping[str, int], minimum: int
) -> tuple[dict[str, int], dict[str, int]]:
    """Who is paid this period and what is carried to the next: ``(payable, carried_out)``.

    A holder's due is their period total plus what was carried in from earlier periods. A due of at
    least ``minimum`` is paid whole (``payable``); a smaller positive due is carried whole
    (``carried_out``) and paid in the first period whose due reaches the minimum. No holder is in
    both; zero dues are in neither. Exact: ``sum(payable) + sum(carried_out) == sum(totals) +
    sum(carried_in)``, and the result does not depend on the order of either mapping (keys sorted).
    """
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
        raise SettlementError(
            f"minimum payout {minimum!r} is not an int of minor units >= 0; set minimum_payout in the "
            "allocation policy (0 pays every holder every period)"
        )
    totals = _amounts(totals_by_holder, "period totals")
    carried = _amounts(carried_in, "carried-in amounts")
    payable: dict[str, int] = {}
    carried_out: dict[str, int] = {}
    for holder in sorted(totals.keys() | carried.keys()):
        due = totals.get(holder, 0) + carried.get(holder, 0)
        if due == 0:
            continue
        if due >= minimum:
            payable[holder] = due
        else:
            carried_out[holder] = due
    return payable, carried_out


@dataclass(frozen=True)
class CarryMove:
    """One ledger movement of the carry-over, ready for ``Transfer.create(key, ...)``.

    ``kind`` is ``carry_over`` (this period's payout, already credited to the holder by the
    per-job payout transfers, moves on to the holder's carry-over account) or ``carry_release``
    (what earlier periods carried moves back to the holder, who is paid this period).
    """

    kind: str  # carry_over | carry_release
    holder: str  # the contributor or provider account
    debit_account: str
    credit_account: str
    amount: int
    key: dict[str, str]  # idempotency key: one move per kind, period and holder
    memo: str


def carry_over_moves(
    period: str, totals_by_holder: Mapping[str, int], carried_in: Mapping[str, int], minimum: int
) -> list[CarryMove]:
    """The carry-over movements of one period, sorted by holder, releases before carries.

    Post them in the same transaction as, and after, the period's per-job payouts: a carry debits
    the holder's account, which those payouts have just credited. With ``minimum`` 0 and nothing
    carried in there are none, so a v1 settlement posts exactly what it posted before.
    """
    if not isinstance(period, str) or not period:
        raise SettlementError(f"period {period!r} is empty; name the period (YYYY-MM) being settled")
    payable, carried_out = apply_minimum_payout(totals_by_holder, carried_in, minimum)
    moves: list[CarryMove] = []
    for holder in sorted(payable):
        released = carried_in.get(holder, 0)
        if released:
            moves.append(
                CarryMove(
                    "carry_release",
                    holder,
                    carry_over_account(holder),
                    holder,
                    released,
                    {"kind": "carry_release", "period": period, "holder": holder},
                    f"release of earlier periods' carried payouts to {holder}: due {payable[holder]} "
                    f">= minimum payout {minimum}",
                )
            )
    for holder in sorted(carried_out):
        earned = totals_by_holder.get(holder, 0)
        if earned:
            moves.append(
                CarryMove(
                    "carry_over",
                    holder,
                    holder,
                    carry_over_account(holder),
                    earned,
                    {"kind": "carry_over", "period": period, "holder": holder},
                    f"payout of {holder} carried to the next period: due {carried_out[holder]} < minimum "
                    f"payout {minimum}",
                )
            )
    return moves
