"""What a period's settlement depends on: its completed jobs, their verified receipts, one digest.

    completed jobs -> each job's usage receipt (through receipt intake when given one) and signed
    valuation, verified and matched against the job row and its escrow -> allocation rows
    -> ``inputs_digest`` over the policy and every job's payment, receipt and valuation

``verify_inputs`` runs outside any database transaction because the injected ``verify`` may read the
database itself. One failing job rejects the whole period (nothing half-settled): the period's row
moves to ``rejected`` with every failing job named, unless it is already posted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from databright.crypto import digest_json
from databright.db import ExchangeDB
from databright.errors import DatabrightError, ReceiptRejected, SettlementError
from databright.ledger.accounts import ESCROW
from databright.ledger.transfers import TransferCode
from databright.money import format_minor
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
from databright.storage.objectstore import ObjectStore
from databright.training.valuation_store import SignedValuation, get_valuation, load_valuation_envelope
from databright.trust.intake import ReceiptIntake, Rejection
from databright.trust.valuation_receipts import ValuationLike, check_binding

Verify = Callable[[dict[str, Any]], ReceiptLike]
VerifyValuation = Callable[[dict[str, Any]], ValuationLike]


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
    budget: int  # escrowed at submission; settlement refunds budget - payment


def completed_jobs(db: ExchangeDB, period: str) -> list[JobRow]:
    found = db.query(
        """SELECT job_id, trainer_id, dataset, dataset_version, payment, provider_id, receipt_key, work_units,
                  budget
           FROM jobs WHERE period = ? AND status = 'completed' ORDER BY job_id""",
        [period],
    )
    return [
        JobRow(
            r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], r[6], None if r[7] is None else int(r[7]), int(r[8])
        )
        for r in found
    ]


# --- receipts ------------------------------------------------------------------------------------


def load_envelope(store: ObjectStore, job: JobRow) -> dict[str, Any]:
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


def load_valuation(db: ExchangeDB, store: ObjectStore, period: str, job: JobRow) -> dict[str, Any]:
    return valuation_envelope(store, period, get_valuation(db, job.job_id))


def valuation_envelope(store: ObjectStore, period: str, found: SignedValuation | None) -> dict[str, Any]:
    """The signed valuation envelope of a job's ``valuations`` row (``None``: the job has none)."""
    if found is None:
        raise SettlementError(
            "it has no signed valuation, and dividends are paid only on values signed by the attested "
            f"value task; run the value flow for period {period} (`databright value {period}`) first"
        )
    try:
        return load_valuation_envelope(store, found)
    except (DatabrightError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SettlementError(f"its valuation receipt cannot be read: {exc}") from exc


def signed_valuations(db: ExchangeDB, job_ids: Sequence[str]) -> dict[str, SignedValuation]:
    """The ``valuations`` rows of ``job_ids`` in ONE query (``get_valuation`` per job opens the
    database file once per job), by job id; a job without one is absent."""
    names = ", ".join(f.name for f in fields(SignedValuation))
    found = db.query(
        f"SELECT {names} FROM valuations WHERE job_id IN (SELECT unnest($1::VARCHAR[]))", [list(job_ids)]
    )
    return {r[0]: SignedValuation(*r) for r in found}


def escrow_of(db: ExchangeDB, job_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``(escrowed, released)`` per job in ONE grouped query: what escrow received for the job, and
    how many movements outside a settlement took it out again (a failed job's refund; a settlement's
    own release of the budget does not count, so a posted period re-verifies). A job with no
    transfers is absent (nothing escrowed, nothing released)."""
    found = db.query(
        """SELECT job_id,
                  COALESCE(SUM(amount) FILTER (WHERE code = $2 AND credit_account = $3), 0::HUGEINT),
                  count(*) FILTER (WHERE debit_account = $3 AND settlement_id IS NULL)
           FROM transfers WHERE job_id IN (SELECT unnest($1::VARCHAR[])) GROUP BY job_id""",
        [list(job_ids), int(TransferCode.ESCROW), ESCROW],
    )
    return {r[0]: (int(r[1]), int(r[2])) for r in found}


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


def check_job(
    db: ExchangeDB,
    verify: Verify,
    verify_valuation: VerifyValuation,
    period: str,
    job: JobRow,
    envelope: dict[str, Any],
    valuation_envelope: dict[str, Any],
    escrow: tuple[int, int] | None = None,
) -> SettledJob:
    """Verify one job's usage receipt and signed valuation and match them against the job row and
    each other; raise SettlementError on any gap. ``escrow`` is the job's ``escrow_of`` entry when
    the caller read every job's escrow at once; without it the job's escrow is queried here."""
    try:
        receipt = verify(envelope)
    except DatabrightError as exc:
        raise SettlementError(f"receipt rejected: {type(exc).__name__}: {exc}") from exc
    receipt_digest = digest_json(envelope)
    try:
        valuation = verify_valuation(valuation_envelope)
        check_binding(valuation, receipt, receipt_digest)
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
    if escrow is None:
        escrow = escrow_of(db, [job.job_id]).get(job.job_id, (0, 0))
    escrowed, released = escrow
    if int(escrowed) != job.budget or released:
        raise SettlementError(
            f"escrow holds {format_minor(int(escrowed))} for it (refunded: {bool(released)}) but its budget "
            f"is {format_minor(job.budget)}; escrow the budget with escrow_job_payment before settling"
        )
    return settled_job(
        job_id=job.job_id,
        trainer_id=job.trainer_id,
        provider_id=receipt.provider_id,
        payment=job.payment,
        receipt=receipt,
        receipt_digest=receipt_digest,
        values={owner: part.value for owner, part in valuation.owners.items()},
        valuation_receipt_digest=digest_json(valuation_envelope),
    )


def _verify_jobs(
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
    # Two queries for the whole period, not two per job: each db.query opens the database file.
    job_ids = [job.job_id for job in jobs]
    signed, escrows = signed_valuations(db, job_ids), escrow_of(db, job_ids)
    for job in jobs:
        try:
            envelopes[job.job_id] = load_envelope(store, job)
            valuations[job.job_id] = valuation_envelope(store, period, signed.get(job.job_id))
        except SettlementError as exc:
            failures.append(f"job {job.job_id}: {exc}")
    if intake is not None and envelopes:
        verify = _admitted_by(intake, period, list(envelopes.values()))
    for job in jobs:
        if job.job_id not in valuations:
            continue
        try:
            facts = check_job(
                db,
                verify,
                verify_valuation,
                period,
                job,
                envelopes[job.job_id],
                valuations[job.job_id],
                escrows.get(job.job_id, (0, 0)),
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
                if row is None:
                    rows.claim(con, period)
                # approver NULL marks a rejection by the checks, not by a reviewer; an approval given
                # to inputs that no longer verify is void.
                rows.advance(con, period, rows.REJECTED, reason=reason, approver=None)
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


def inputs_digest(
    period: str, policy: AllocationPolicy, jobs: Sequence[SettledJob], budgets: Mapping[str, int]
) -> str:
    """What a settlement depends on: the policy, and each job's id, payment, budget, receipt and
    valuation."""
    return digest_json(
        {
            "period": period,
            "policy_digest": policy.digest,
            "jobs": [
                {
                    "job_id": j.job_id,
                    "payment": j.payment,
                    "budget": budgets[j.job_id],
                    "receipt_digest": j.receipt_digest,
                    "valuation_receipt_digest": j.valuation_receipt_digest,
                }
                for j in sorted(jobs, key=lambda j: j.job_id)
            ],
        }
    )


@dataclass(frozen=True)
class VerifiedInputs:
    """A period's verified jobs and allocation rows, with the two digests that pin them."""

    period: str
    jobs: tuple[SettledJob, ...]
    allocations: tuple[Allocation, ...]
    inputs_digest: str
    allocation_root: str
    assurance: str  # "simulated" when any receipt was simulated, else "hardware"
    budgets: Mapping[str, int]  # job id -> escrowed budget; settlement refunds budget - payment

    def totals(self) -> dict[str, int]:
        """Minor units per holder account over the period, by account id."""
        totals: dict[str, int] = {}
        for a in self.allocations:
            totals[a.holder] = totals.get(a.holder, 0) + a.amount
        return dict(sorted(totals.items()))


def jobs_to_settle(db: ExchangeDB, period: str) -> list[JobRow]:
    """The period's completed jobs; a period with none is an error (there is nothing to settle)."""
    jobs = completed_jobs(db, period)
    if not jobs:
        raise SettlementError(
            f"period {period} has no completed jobs, so there is nothing to settle; check the period "
            "(YYYY-MM) or wait until its jobs complete",
            period=period,
        )
    return jobs


def verify_inputs(
    db: ExchangeDB,
    store: ObjectStore,
    *,
    period: str,
    policy: AllocationPolicy,
    jobs: Sequence[JobRow],
    verify: Verify,
    verify_valuation: VerifyValuation,
    intake: ReceiptIntake | None = None,
) -> VerifiedInputs:
    """Verify every job of ``jobs`` and allocate it; raise ``SettlementError`` naming each failing job."""
    settled, allocations = _verify_jobs(db, store, verify, verify_valuation, period, policy, jobs, intake)
    budgets = {job.job_id: job.budget for job in jobs}
    return VerifiedInputs(
        period=period,
        jobs=tuple(settled),
        allocations=tuple(allocations),
        inputs_digest=inputs_digest(period, policy, settled, budgets),
        allocation_root=allocation_root(allocations),
        assurance="simulated" if any(j.assurance != "hardware" for j in settled) else "hardware",
        budgets=budgets,
    )
