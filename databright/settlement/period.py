"""``settle_period``: pay out one period's completed jobs, exactly once, or not at all.

    claim the period -> load completed jobs -> verify every receipt, through receipt intake when
    given one, and every job's signed valuation (one failure rejects the period)
    -> allocate each job's payment -> inputs digest + allocation root -> approve -> post every
    transfer in ONE transaction -> posted -> statements

Idempotent: transfer ids derive from (period, job, leg, holder) and the period's row holds the
inputs digest, so re-running a posted period with the same inputs returns the same ``Settlement``
and posts nothing, while different inputs raise ``SettlementConflict``. Atomic: the transfers and
the move to ``posted`` commit together. Verification runs outside any database transaction because
the injected ``verify`` may read the database itself.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from databright.crypto import digest_json
from databright.db import ExchangeDB
from databright.errors import DatabrightError, ReceiptRejected, SettlementConflict, SettlementError
from databright.ledger.accounts import COMPUTE_POOL, DATA_POOL, ESCROW, EXCHANGE_FEE
from databright.ledger.store import Ledger
from databright.ledger.transfers import Transfer, TransferCode
from databright.money import format_minor
from databright.provenance.record import record_settlement
from databright.provenance.statements import ProvenanceLog
from databright.settlement import store as rows
from databright.settlement.allocation import (
    Allocation,
    ReceiptLike,
    SettledJob,
    allocate_job,
    allocation_root,
    settled_job,
    sort_allocations,
)
from databright.settlement.policy import AllocationPolicy
from databright.settlement.result import Settlement, check_period
from databright.settlement.statements import write_statements
from databright.storage.objectstore import ObjectStore
from databright.training.valuation_store import get_valuation, load_valuation_envelope
from databright.trust.intake import ReceiptIntake, Rejection
from databright.trust.valuation_receipts import ValuationLike, check_binding

Verify = Callable[[dict[str, Any]], ReceiptLike]
VerifyValuation = Callable[[dict[str, Any]], ValuationLike]

_LEGS = {
    "data": (DATA_POOL, TransferCode.SETTLE_DATA),
    "compute": (COMPUTE_POOL, TransferCode.SETTLE_COMPUTE),
    "fee": (EXCHANGE_FEE, TransferCode.SETTLE_FEE),
}


@dataclass(frozen=True)
class JobRow:
    job_id: str
    trainer_id: str
    dataset: str
    dataset_version: int
    payment: int
    provider_id: str | None
    receipt_key: str | None
    work_units: int | None


def completed_jobs(db: ExchangeDB, period: str) -> list[JobRow]:
    found = db.query(
        """SELECT job_id, trainer_id, dataset, dataset_version, payment, provider_id, receipt_key, work_units
           FROM jobs WHERE period = ? AND status = 'completed' ORDER BY job_id""",
        [period],
    )
    return [
        JobRow(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], r[6], None if r[7] is None else int(r[7]))
        for r in found
    ]


# --- receipts ------------------------------------------------------------------------------------


def _load_envelope(store: ObjectStore, job: JobRow) -> dict[str, Any]:
    if not job.receipt_key:
        raise SettlementError("it is completed but has no receipt_key")
    try:
        envelope = json.loads(store.get_bytes(job.receipt_key))
    except DatabrightError as exc:
        raise SettlementError(f"its receipt cannot be read: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SettlementError(f"its receipt at {job.receipt_key!r} is not JSON: {exc}") from exc
    if not isinstance(envelope, dict):
        raise SettlementError(f"its receipt at {job.receipt_key!r} is not a DSSE envelope object")
    return envelope


def _load_valuation(db: ExchangeDB, store: ObjectStore, period: str, job: JobRow) -> dict[str, Any]:
    found = get_valuation(db, job.job_id)
    if found is None:
        raise SettlementError(
            "it has no signed valuation, and dividends are paid only on values signed by the attested "
            f"value task; run the value flow for period {period} (`databright value {period}`) first"
        )
    try:
        return load_valuation_envelope(store, found)
    except (DatabrightError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SettlementError(f"its valuation receipt cannot be read: {exc}") from exc


def _admitted_by(intake: ReceiptIntake, period: str, envelopes: Sequence[dict[str, Any]]) -> Verify:
    """A ``verify`` answering from one ``admit_many`` over the whole period.

    Intake takes each session's receipts in sequence order whatever the job order, stores them
    once (a re-settle finds them ``replayed``), and refuses equivocating or quarantined sessions,
    broken chains and unknown dataset roots on top of the per-receipt checks.
    """
    report = intake.admit_many(envelopes, period=period)
    outcomes = {digest_json(env): outcome for env, outcome in zip(envelopes, report.outcomes, strict=True)}

    def verify(envelope: dict[str, Any]) -> ReceiptLike:
        outcome = outcomes[digest_json(envelope)]
        if isinstance(outcome, Rejection):
            raise ReceiptRejected(f"{outcome.reason}: {outcome.message}", reason=outcome.reason)
        return outcome.receipt

    return verify


def _check_job(
    db: ExchangeDB,
    verify: Verify,
    verify_valuation: VerifyValuation,
    period: str,
    job: JobRow,
    envelope: dict[str, Any],
    valuation_envelope: dict[str, Any],
) -> SettledJob:
    """Verify one job's usage receipt and signed valuation and match them against the job row and
    each other; raise SettlementError on any gap."""
    try:
        receipt = verify(envelope)
    except DatabrightError as exc:
        raise SettlementError(f"receipt rejected: {type(exc).__name__}: {exc}") from exc
    try:
        valuation = verify_valuation(valuation_envelope)
        check_binding(valuation, receipt, digest_json(envelope))
    except DatabrightError as exc:
        raise SettlementError(f"valuation rejected: {type(exc).__name__}: {exc}") from exc
    mismatches = [
        f"{name} {got!r} != job's {want!r}"
        for name, got, want in (
            ("job_id", receipt.job_id, job.job_id),
            ("period", receipt.period, period),
            ("dataset", receipt.dataset, job.dataset),
            ("dataset_version", int(receipt.dataset_version), job.dataset_version),
            ("provider_id", receipt.provider_id, job.provider_id or receipt.provider_id),
            (
                "work_units",
                int(receipt.work_units),
                job.work_units if job.work_units is not None else int(receipt.work_units),
            ),
        )
        if got != want
    ]
    if receipt.assurance not in ("simulated", "hardware"):
        mismatches.append(f"assurance {receipt.assurance!r} is neither 'simulated' nor 'hardware'")
    if mismatches:
        raise SettlementError("its receipt does not match the job: " + "; ".join(mismatches))
    escrowed, released = db.query(
        """SELECT COALESCE(SUM(amount) FILTER (WHERE code = ? AND credit_account = ?), 0::HUGEINT),
                  count(*) FILTER (WHERE code = ?)
           FROM transfers WHERE job_id = ?""",
        [int(TransferCode.ESCROW), ESCROW, int(TransferCode.REFUND), job.job_id],
    )[0]
    if int(escrowed) != job.payment or released:
        raise SettlementError(
            f"escrow holds {format_minor(int(escrowed))} for it (refunded: {bool(released)}) but its payment "
            f"is {format_minor(job.payment)}; escrow the payment with escrow_job_payment before settling"
        )
    return settled_job(
        job_id=job.job_id,
        trainer_id=job.trainer_id,
        provider_id=receipt.provider_id,
        payment=job.payment,
        receipt=receipt,
        receipt_digest=digest_json(envelope),
        values={owner: part.value for owner, part in valuation.owners.items()},
        valuation_receipt_digest=digest_json(valuation_envelope),
    )


def _verify_all(
    db: ExchangeDB,
    store: ObjectStore,
    verify: Verify,
    verify_valuation: VerifyValuation,
    period: str,
    policy: AllocationPolicy,
    jobs: Sequence[JobRow],
    intake: ReceiptIntake | None,
) -> tuple[list[SettledJob], list[Allocation]]:
    """Every job's verified facts and allocation rows, or a rejection naming every failing job."""
    settled: list[SettledJob] = []
    allocations: list[Allocation] = []
    failures: list[str] = []
    envelopes: dict[str, dict[str, Any]] = {}
    valuations: dict[str, dict[str, Any]] = {}
    for job in jobs:
        try:
            envelopes[job.job_id] = _load_envelope(store, job)
            valuations[job.job_id] = _load_valuation(db, store, period, job)
        except SettlementError as exc:
            failures.append(f"job {job.job_id}: {exc}")
    if intake is not None and envelopes:
        verify = _admitted_by(intake, period, list(envelopes.values()))
    for job in jobs:
        if job.job_id not in valuations:
            continue
        try:
            facts = _check_job(
                db, verify, verify_valuation, period, job, envelopes[job.job_id], valuations[job.job_id]
            )
            allocations += allocate_job(policy, period, facts)
            settled.append(facts)
        except SettlementError as exc:
            failures.append(f"job {job.job_id}: {exc}")
    if failures:
        reason = "; ".join(failures)
        with db.transaction() as con:
            row = rows.read_settlement(con, period)
            posted = row is not None and row.state == "posted"
            if not posted:
                rows.advance(con, period, rows.REJECTED, reason=reason)
        if posted:
            raise SettlementError(
                f"period {period} is already posted, but re-checking its receipts failed: {reason}. The "
                "posted transfers stand; correct them with reversing transfers if a receipt was bad",
                period=period,
                failures=failures,
            )
        raise SettlementError(
            f"period {period} rejected, nothing posted: {reason}. Fix or replace the named receipts and "
            "settle the period again",
            period=period,
            failures=failures,
        )
    return settled, sort_allocations(allocations)


# --- digests and transfers ------------------------------------------------------------------------


def inputs_digest(period: str, policy: AllocationPolicy, jobs: Sequence[SettledJob]) -> str:
    """What a settlement depends on: the policy, and each job's id, payment, receipt and valuation."""
    return digest_json(
        {
            "period": period,
            "policy_digest": policy.digest,
            "jobs": [
                {
                    "job_id": j.job_id,
                    "payment": j.payment,
                    "receipt_digest": j.receipt_digest,
                    "valuation_receipt_digest": j.valuation_receipt_digest,
                }
                for j in sorted(jobs, key=lambda j: j.job_id)
            ],
        }
    )


def settlement_transfers(period: str, allocations: Sequence[Allocation]) -> list[Transfer]:
    """Escrow -> pools and fee for each job, then pools -> holders; zero amounts move nothing."""
    settlement_id = f"settlement:{period}"
    out: list[Transfer] = []
    by_job: dict[str, list[Allocation]] = {}
    for a in sort_allocations(list(allocations)):
        by_job.setdefault(a.job_id, []).append(a)
    for job_id, parts in by_job.items():
        for role, (pool, code) in _LEGS.items():
            amount = sum(a.amount for a in parts if a.role == role)
            if amount:
                out.append(
                    Transfer.create(
                        {"kind": "settle", "period": period, "job": job_id, "role": role},
                        debit_account=ESCROW,
                        credit_account=pool,
                        amount=amount,
                        code=code,
                        memo=f"{role} share of job {job_id}",
                        period=period,
                        settlement_id=settlement_id,
                        job_id=job_id,
                    )
                )
        for a in parts:
            if a.role == "fee" or not a.amount:
                continue
            pool = DATA_POOL if a.role == "data" else COMPUTE_POOL
            out.append(
                Transfer.create(
                    {"kind": "payout", "period": period, "job": job_id, "role": a.role, "holder": a.holder},
                    debit_account=pool,
                    credit_account=a.holder,
                    amount=a.amount,
                    code=TransferCode.PAYOUT,
                    memo=f"{a.role} payout of job {job_id} by {a.basis}",
                    period=period,
                    settlement_id=settlement_id,
                    job_id=job_id,
                )
            )
    return out


def _totals(allocations: Sequence[Allocation]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for a in allocations:
        totals[a.holder] = totals.get(a.holder, 0) + a.amount
    return dict(sorted(totals.items()))


# --- the period -----------------------------------------------------------------------------------


def settle_period(
    db: ExchangeDB,
    store: ObjectStore,
    *,
    period: str,
    policy: AllocationPolicy,
    verify: Verify,
    verify_valuation: VerifyValuation,
    approver: str = "auto",
    statements_dir: Path,
    provenance: ProvenanceLog | None = None,
    intake: ReceiptIntake | None = None,
) -> Settlement:
    """Settle every completed job of ``period``; see the module docstring for the steps.

    ``verify_valuation`` checks each job's signed valuation (``Settings.valuation_verifier``); the data
    share is paid only on the per-owner values of a valuation that verifies and names the job's usage
    receipt (``check_binding``). With ``intake`` every receipt of the period goes through
    ``ReceiptIntake.admit_many`` (chains, equivocation, dataset roots, stored once) instead of
    ``verify`` alone.

    With ``provenance`` the posted settlement's ``settle`` statement is recorded, consuming each job's
    usage and valuation receipts (idempotent by content, so a re-run records nothing new; the
    ``value`` statements were recorded by the value step).
    """
    check_period(period)
    if not isinstance(approver, str) or not approver.strip():
        raise SettlementError(f"approver {approver!r} is empty; name who approves the settlement")
    jobs = completed_jobs(db, period)
    if not jobs:
        raise SettlementError(
            f"period {period} has no completed jobs, so there is nothing to settle; check the period "
            "(YYYY-MM) or wait until its jobs complete",
            period=period,
        )
    with db.transaction() as con:
        claimed = rows.claim(con, period)

    settled, allocations = _verify_all(db, store, verify, verify_valuation, period, policy, jobs, intake)
    digest = inputs_digest(period, policy, settled)
    assurance = "simulated" if any(j.assurance != "hardware" for j in settled) else "hardware"
    root = allocation_root(allocations)

    def result(row: rows.SettlementRow) -> Settlement:
        return Settlement(
            period=period,
            state=row.state,
            inputs_digest=digest,
            policy_version=policy.version,
            policy_digest=policy.digest,
            allocation_root=root,
            assurance=assurance,
            approver=row.approver,
            allocations=tuple(allocations),
            totals=_totals(allocations),
            jobs=tuple(settled),
            policy=policy,
        )

    if claimed.state != "posted":
        with db.transaction() as con:
            rows.advance(
                con,
                period,
                "valued",
                inputs_digest=digest,
                policy_version=policy.version,
                policy_digest=policy.digest,
                assurance=assurance,
            )
        with db.transaction() as con:
            rows.advance(con, period, "proposed", allocation_root=root)
            rows.replace_allocations(con, period, allocations)
        # The first slice approves automatically; a review step will stop here and wait.
        with db.transaction() as con:
            rows.advance(con, period, "approved", approver=approver)

    transfers = settlement_transfers(period, allocations)
    with db.transaction() as con:
        row = rows.read_settlement(con, period)
        if row is None:
            raise SettlementError(f"period {period} lost its settlements row while settling; settle it again")
        if row.state == "posted":
            _check_same(period, row, digest, root)
        else:
            if (row.state, row.inputs_digest, row.allocation_root) != ("approved", digest, root):
                raise SettlementError(
                    f"period {period} changed while this run settled it (state {row.state!r}, inputs "
                    f"{row.inputs_digest}); another run is settling it — wait for it, then settle again",
                    period=period,
                )
            Ledger(db).post(con, transfers)
            rows.advance(con, period, "posted", posted_at=dt.datetime.now(dt.UTC))
        final = rows.read_settlement(con, period)
    if final is None:
        raise SettlementError(f"period {period} lost its settlements row while posting; settle it again")
    settlement = result(final)
    paths = write_statements(settlement, statements_dir)
    if provenance is not None:
        record_settlement(provenance, settlement, paths)
    return settlement


def _check_same(period: str, row: rows.SettlementRow, digest: str, root: str) -> None:
    if row.inputs_digest != digest or row.allocation_root != root:
        raise SettlementConflict(
            f"period {period} is already posted with inputs {row.inputs_digest} and allocation root "
            f"{row.allocation_root}; these inputs give {digest} and {root}. A posted period is final: "
            "settle late or corrected jobs in a later period (corrections are reversing transfers)",
            period=period,
            posted_inputs=row.inputs_digest,
            new_inputs=digest,
        )
