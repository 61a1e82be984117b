"""A period's settlement in three steps, so that no money moves before someone approved it.

    propose_period: claim -> verify every receipt and signed valuation -> allocate
                    -> valued (inputs digest) -> proposed (allocation root, allocation rows)
    approve_period / reject_period (``review``): a reviewer's decision on that allocation root
    post_period:    re-verify -> inputs digest and allocation root unchanged since approval
                    -> every transfer and the move to ``posted`` in ONE transaction -> statements

``settle_period`` composes the three (approving as ``approver``) for callers with nobody to ask.

Idempotent: transfer ids derive from (period, job, leg, holder) and the period's row holds the
inputs digest, so re-running a posted period with the same inputs returns the same ``Settlement``
and posts nothing, while different inputs raise ``SettlementConflict``. Proposing unchanged inputs
again keeps the proposal and any approval of it; changed inputs replace the proposal and void the
approval. Atomic: the transfers and the move to ``posted`` commit together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from databright.crypto import SigningKey
from databright.db import ExchangeDB, write_conflicts_as
from databright.errors import SettlementConflict, SettlementError
from databright.ledger.accounts import COMPUTE_POOL, DATA_POOL, EXCHANGE_FEE, REVENUE, carried_holder
from databright.ledger.audit_log import checkpoint
from databright.ledger.escrow import close_escrow
from databright.ledger.store import Ledger
from databright.ledger.transfers import Transfer, TransferCode
from databright.provenance.record import record_settlement
from databright.provenance.statements import ProvenanceLog
from databright.settlement import store as rows
from databright.settlement.allocation import (
    Allocation,
    SettledJob,
    carry_over_moves,
    payout_totals,
)
from databright.settlement.inputs import (
    JobRow,
    VerifiedInputs,
    Verify,
    VerifyValuation,
    completed_jobs,
    inputs_digest,
    jobs_to_settle,
    verify_inputs,
)
from databright.settlement.policy import AllocationPolicy
from databright.settlement.result import CarryLine, Proposal, Settlement, check_period
from databright.settlement.review import AUTO_APPROVER, approve_period, check_reviewer, rejected_in_review
from databright.settlement.statements import write_statements
from databright.storage.objectstore import ObjectStore
from databright.trust.intake import ReceiptIntake

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "JobRow",
    "Verify",
    "VerifyValuation",
    "completed_jobs",
    "inputs_digest",
    "post_period",
    "propose_period",
    "settle_period",
    "settlement_transfers",
]

_LEGS = {
    "data": (DATA_POOL, TransferCode.SETTLE_DATA),
    "compute": (COMPUTE_POOL, TransferCode.SETTLE_COMPUTE),
    "fee": (EXCHANGE_FEE, TransferCode.SETTLE_FEE),
}


# --- transfers -----------------------------------------------------------------------------------


def settlement_transfers(
    period: str,
    allocations: Sequence[Allocation],
    jobs: Sequence[SettledJob],
    budgets: Mapping[str, int],
) -> list[Transfer]:
    """Per job: escrow -> revenue (its payment) and the unused budget back to the trainer
    (``close_escrow``), then revenue -> pools and fee. Per period: pools -> holders, one payout per
    (role, holder) over all the period's jobs. Zero amounts move nothing.

    Revenue is split the moment it is recognised, and the pools are paid out in the same posting, so
    both net to zero in every posted period. Payouts are per period, not per job, because a holder is
    paid once a period like a bank statement line, and because a period's allocation rows (one per job
    and owner, 10M in a large period) would otherwise each become a transfer: the per-job derivation of
    every payout is in the allocation rows, which the allocation root pins and each statement lists.
    """
    settlement_id = f"settlement:{period}"
    known = {job.job_id for job in jobs}
    parts: dict[tuple[str, str], int] = {}  # (job, role) -> amount
    payouts: dict[tuple[str, str], list[int]] = {}  # (role, holder) -> [amount, jobs]
    bases: dict[tuple[str, str], set[str]] = {}
    for a in allocations:
        if a.job_id not in known:
            raise SettlementError(
                f"allocation row for job {a.job_id} of period {period} has no verified job; allocate only "
                "verified jobs (verify_inputs)",
                period=period,
            )
        parts[(a.job_id, a.role)] = parts.get((a.job_id, a.role), 0) + a.amount
        if a.role != "fee" and a.amount:
            due = payouts.setdefault((a.role, a.holder), [0, 0])
            due[0] += a.amount
            due[1] += 1
            bases.setdefault((a.role, a.holder), set()).add(a.basis)
    out: list[Transfer] = []
    for job in sorted(jobs, key=lambda j: j.job_id):
        job_id = job.job_id
        out += close_escrow(
            period=period,
            job_id=job_id,
            trainer_id=job.trainer_id,
            payment=job.payment,
            budget=budgets[job_id],
            settlement_id=settlement_id,
        )
        for role, (pool, code) in _LEGS.items():
            amount = parts.get((job_id, role), 0)
            if amount:
                out.append(
                    Transfer.create(
                        {"kind": "settle", "period": period, "job": job_id, "role": role},
                        debit_account=REVENUE,
                        credit_account=pool,
                        amount=amount,
                        code=code,
                        memo=f"{role} share of job {job_id}",
                        period=period,
                        settlement_id=settlement_id,
                        job_id=job_id,
                    )
                )
    for (role, holder), (amount, rows_paid) in sorted(
        payouts.items(), key=lambda item: (item[0][1], item[0][0])
    ):
        out.append(
            Transfer.create(
                {"kind": "payout", "period": period, "role": role, "holder": holder},
                debit_account=DATA_POOL if role == "data" else COMPUTE_POOL,
                credit_account=holder,
                amount=amount,
                code=TransferCode.PAYOUT,
                memo=f"{role} payout of period {period}: {rows_paid} allocation row(s) by "
                + "+".join(sorted(bases[(role, holder)])),
                period=period,
                settlement_id=settlement_id,
            )
        )
    return out


def carried_in(con: duckdb.DuckDBPyConnection, period: str) -> dict[str, int]:
    """What earlier periods carried over and have not released, by holder account id.

    Only transfers of periods before ``period`` count, so re-running a period never sees its own
    carry moves.
    """
    found = con.execute(
        """SELECT account, SUM(amount) FROM (
               SELECT credit_account AS account, amount FROM transfers WHERE code = ? AND period < ?
               UNION ALL
               SELECT debit_account AS account, -amount FROM transfers WHERE code = ? AND period < ?)
           GROUP BY account HAVING SUM(amount) <> 0 ORDER BY account""",
        [int(TransferCode.CARRY_OVER), period, int(TransferCode.CARRY_RELEASE), period],
    ).fetchall()
    return {carried_holder(str(account)): int(amount) for account, amount in found}


def carry_transfers(
    con: duckdb.DuckDBPyConnection, period: str, policy: AllocationPolicy, allocations: Sequence[Allocation]
) -> list[Transfer]:
    """The period's carry-over moves (``carry_over_moves``) as transfers, posted after its payouts.

    A carry chain depends on the order periods are posted in, so a period cannot be posted once a
    later one is, whenever anything is carried or the policy has a minimum payout.
    """
    earlier = carried_in(con, period)
    if not earlier and not policy.minimum_payout:
        return []
    later = con.execute(
        "SELECT min(period) FROM settlements WHERE period > ? AND state = 'posted'", [period]
    ).fetchone()
    if later is not None and later[0] is not None:
        raise SettlementError(
            f"period {period} cannot be posted after the later period {later[0]}: payouts below the "
            f"minimum ({policy.minimum_payout} minor units) are carried from period to period in order; "
            "settle periods in order",
            period=period,
        )
    settlement_id = f"settlement:{period}"
    codes = {"carry_over": TransferCode.CARRY_OVER, "carry_release": TransferCode.CARRY_RELEASE}
    return [
        Transfer.create(
            move.key,
            debit_account=move.debit_account,
            credit_account=move.credit_account,
            amount=move.amount,
            code=codes[move.kind],
            memo=move.memo,
            period=period,
            settlement_id=settlement_id,
        )
        for move in carry_over_moves(period, payout_totals(allocations), earlier, policy.minimum_payout)
    ]


# --- the period -----------------------------------------------------------------------------------


def _claim_unless_reviewed(db: ExchangeDB, period: str) -> None:
    """Make sure the period has a row, so a failing receipt can be recorded against it.

    A period rejected by its checks is claimed afresh; one rejected by a reviewer keeps its row
    (inputs digest and reason) until its new inputs are known, so that unchanged inputs are refused.
    """
    with db.transaction() as con:
        row = rows.read_settlement(con, period)
        if row is None or (row.state == rows.REJECTED and not rejected_in_review(row)):
            rows.claim(con, period)


def carry_lines(
    con: duckdb.DuckDBPyConnection,
    period: str,
    policy: AllocationPolicy,
    allocations: Sequence[Allocation],
    posted: bool,
) -> dict[str, CarryLine]:
    """Each holder's carry-over in ``period``: as posted (read from the ledger), or as posting would
    make it now (``carry_over_moves`` over the carried balances of earlier periods)."""
    found: dict[str, list[int]] = {}
    if posted:
        moved = con.execute(
            """SELECT code, CASE WHEN code = ? THEN credit_account ELSE debit_account END, SUM(amount)
               FROM transfers WHERE period = ? AND code IN (?, ?) GROUP BY ALL""",
            [
                int(TransferCode.CARRY_RELEASE),
                period,
                int(TransferCode.CARRY_OVER),
                int(TransferCode.CARRY_RELEASE),
            ],
        ).fetchall()
        for code, holder, amount in moved:
            found.setdefault(str(holder), [0, 0])[0 if int(code) == TransferCode.CARRY_RELEASE else 1] += int(
                amount
            )
    else:
        earlier = carried_in(con, period)
        if earlier or policy.minimum_payout:
            moves = carry_over_moves(period, payout_totals(allocations), earlier, policy.minimum_payout)
            for move in moves:
                found.setdefault(move.holder, [0, 0])[0 if move.kind == "carry_release" else 1] += move.amount
    return {h: CarryLine(h, released, carried) for h, (released, carried) in sorted(found.items())}


def _proposal(
    db: ExchangeDB, policy: AllocationPolicy, found: VerifiedInputs, row: rows.SettlementRow
) -> Proposal:
    with db.connect() as con:
        carry = carry_lines(con, found.period, policy, found.allocations, posted=row.state == "posted")
    return Proposal(
        period=found.period,
        state=row.state,
        inputs_digest=found.inputs_digest,
        policy_version=policy.version,
        policy_digest=policy.digest,
        allocation_root=found.allocation_root,
        assurance=found.assurance,
        approver=row.approver,
        reason=row.reason,
        allocations=found.allocations,
        totals=found.totals(),
        jobs=found.jobs,
        policy=policy,
        carry=carry,
    )


def _propose(db: ExchangeDB, policy: AllocationPolicy, found: VerifiedInputs) -> Proposal:
    period, digest, root = found.period, found.inputs_digest, found.allocation_root
    with db.transaction() as con:
        row = rows.read_settlement(con, period)
        if row is None:
            raise SettlementError(f"period {period} lost its settlements row while proposing; run it again")
        unchanged = (row.inputs_digest, row.allocation_root) == (digest, root)
        if row.state == "posted":
            _check_same(period, row, digest, root)
            return _proposal(db, policy, found, row)
        if rejected_in_review(row) and unchanged:
            raise SettlementError(
                f"period {period} was rejected by {row.approver} ({row.reason}) and its inputs are unchanged "
                f"since (inputs {digest}); nothing was proposed or posted. Fix what the reviewer named "
                "(receipts, valuations, jobs or the policy), then propose the period again",
                period=period,
                rejected_by=row.approver,
            )
        if row.state in ("proposed", "approved") and unchanged:
            return _proposal(db, policy, found, row)  # the same proposal: it and its approval stand
        if row.state == rows.REJECTED:
            rows.claim(con, period)
        rows.advance(
            con,
            period,
            "valued",
            inputs_digest=digest,
            policy_version=policy.version,
            policy_digest=policy.digest,
            assurance=found.assurance,
            allocation_root=None,
            approver=None,  # an approval of other inputs does not carry over
            reason=None,
        )
    with db.transaction() as con:
        row = rows.read_settlement(con, period)
        if (
            row is not None
            and row.state in ("proposed", "approved", "posted")
            and (row.inputs_digest, row.allocation_root) == (digest, root)
        ):
            return _proposal(db, policy, found, row)  # a concurrent run proposed the very same allocations
        if row is None or (row.state, row.inputs_digest) != ("valued", digest):
            raise SettlementError(
                f"period {period} changed while this run proposed it (state "
                f"{None if row is None else row.state!r}); another run is settling it — wait for it, then "
                "run again",
                period=period,
            )
        rows.advance(con, period, "proposed", allocation_root=root)
        rows.replace_allocations(con, period, list(found.allocations))
        proposed = rows.read_settlement(con, period)
    if proposed is None:
        raise SettlementError(f"period {period} lost its settlements row while proposing; run it again")
    return _proposal(db, policy, found, proposed)


def propose_period(
    db: ExchangeDB,
    store: ObjectStore,
    *,
    period: str,
    policy: AllocationPolicy,
    verify: Verify,
    verify_valuation: VerifyValuation,
    intake: ReceiptIntake | None = None,
) -> Proposal:
    """Verify and allocate every completed job of ``period`` and store the proposal; post nothing.

    Returns the ``Proposal`` with the period's state: ``proposed`` (awaiting review), ``approved``
    (unchanged inputs, already approved) or ``posted`` (unchanged inputs, already final). Raises
    ``SettlementConflict`` for different inputs of a posted period, and ``SettlementError`` when a
    receipt or valuation fails (the period is then ``rejected``) or when a reviewer rejected these
    very inputs.

    ``verify_valuation`` checks each job's signed valuation (``Settings.valuation_verifier``); the data
    share is paid only on the per-owner values of a valuation that verifies and names the job's usage
    receipt. With ``intake`` every receipt of the period goes through ``ReceiptIntake.admit_many``
    (chains, equivocation, dataset roots, stored once) instead of ``verify`` alone.
    """
    check_period(period)
    with _one_run_at_a_time(period):
        jobs = jobs_to_settle(db, period)
        _claim_unless_reviewed(db, period)
        found = verify_inputs(
            db,
            store,
            period=period,
            policy=policy,
            jobs=jobs,
            verify=verify,
            verify_valuation=verify_valuation,
            intake=intake,
        )
        return _propose(db, policy, found)


def _not_approved(period: str, row: rows.SettlementRow | None) -> str:
    state = "has no proposal" if row is None else f"is {row.state!r}, not approved"
    return (
        f"period {period} {state}, so nothing was posted; money moves only after approval: propose it "
        f"(the settle flow), then approve it in the Prefect UI or with `databright settle approve {period} "
        "--approver NAME`"
    )


def _post(
    db: ExchangeDB,
    policy: AllocationPolicy,
    found: VerifiedInputs,
    statements_dir: Path,
    provenance: ProvenanceLog | None,
    store: ObjectStore,
    audit_key: SigningKey | None,
) -> Settlement:
    period, digest, root = found.period, found.inputs_digest, found.allocation_root
    transfers = settlement_transfers(period, found.allocations, found.jobs, found.budgets)
    with db.transaction() as con:
        row = rows.read_settlement(con, period)
        if row is not None and row.state == "posted":
            _check_same(period, row, digest, root)
        elif row is None or row.state != "approved":
            raise SettlementError(_not_approved(period, row), period=period)
        elif (row.inputs_digest, row.allocation_root) != (digest, root):
            raise SettlementError(
                f"period {period} was approved by {row.approver} for inputs {row.inputs_digest} (allocation "
                f"root {row.allocation_root}), but its inputs now give {digest} ({root}); nothing was "
                "posted. Propose the period again and have the new proposal reviewed",
                period=period,
                approved_inputs=row.inputs_digest,
                new_inputs=digest,
            )
        else:
            # Carries debit holders the payouts just credited, so they are posted after them, together.
            Ledger(db).post(con, [*transfers, *carry_transfers(con, period, policy, found.allocations)])
            rows.advance(con, period, "posted", posted_at=dt.datetime.now(dt.UTC))
        final = rows.read_settlement(con, period)
    if final is None:
        raise SettlementError(f"period {period} lost its settlements row while posting; settle it again")
    settlement = _proposal(db, policy, found, final).as_settlement()
    paths = write_statements(settlement, statements_dir)
    if provenance is not None:
        record_settlement(provenance, settlement, paths)
    if audit_key is not None:
        # After the posting committed: a checkpoint signs the audit log including this period's rows.
        checkpoint(db, store, audit_key)
    return settlement


def post_period(
    db: ExchangeDB,
    store: ObjectStore,
    *,
    period: str,
    policy: AllocationPolicy,
    verify: Verify,
    verify_valuation: VerifyValuation,
    statements_dir: Path,
    provenance: ProvenanceLog | None = None,
    intake: ReceiptIntake | None = None,
    audit_key: SigningKey | None = None,
) -> Settlement:
    """Post an approved period: re-verify its inputs, check that its inputs digest and allocation root
    are the approved ones, then post every transfer and mark it ``posted`` in one transaction, and
    write its statements. A posted period with the same inputs returns its ``Settlement`` again.

    With ``provenance`` the posted settlement's ``settle`` statement is recorded, consuming each job's
    usage and valuation receipts (idempotent by content, so a re-run records nothing new). With
    ``audit_key`` a signed checkpoint of the audit log is exported to ``store`` afterwards.
    """
    check_period(period)
    with _one_run_at_a_time(period):
        jobs = jobs_to_settle(db, period)
        with db.transaction() as con:
            row = rows.read_settlement(con, period)
        if row is None or row.state not in ("approved", "posted"):
            raise SettlementError(_not_approved(period, row), period=period)
        found = verify_inputs(
            db,
            store,
            period=period,
            policy=policy,
            jobs=jobs,
            verify=verify,
            verify_valuation=verify_valuation,
            intake=intake,
        )
        return _post(db, policy, found, statements_dir, provenance, store, audit_key)


def settle_period(
    db: ExchangeDB,
    store: ObjectStore,
    *,
    period: str,
    policy: AllocationPolicy,
    verify: Verify,
    verify_valuation: VerifyValuation,
    approver: str = AUTO_APPROVER,
    statements_dir: Path,
    provenance: ProvenanceLog | None = None,
    intake: ReceiptIntake | None = None,
    audit_key: SigningKey | None = None,
) -> Settlement:
    """Propose, approve as ``approver`` and post ``period`` in one call, for callers with no reviewer.

    The receipts are verified once: the approval and the posting check the inputs digest and
    allocation root of that one verification against the period's row.
    """
    check_period(period)
    with _one_run_at_a_time(period):
        approver = check_reviewer(approver)
        jobs = jobs_to_settle(db, period)
        _claim_unless_reviewed(db, period)
        found = verify_inputs(
            db,
            store,
            period=period,
            policy=policy,
            jobs=jobs,
            verify=verify,
            verify_valuation=verify_valuation,
            intake=intake,
        )
        proposal = _propose(db, policy, found)
        if proposal.state == "proposed":
            approve_period(db, period=period, approver=approver, allocation_root=proposal.allocation_root)
        return _post(db, policy, found, statements_dir, provenance, store, audit_key)


def _one_run_at_a_time(period: str) -> AbstractContextManager[None]:
    """The loser of two runs settling one period at once gets this error, not DuckDB's: its
    transaction was rolled back, so it wrote nothing and running again is safe."""
    return write_conflicts_as(
        SettlementError,
        f"another run was settling period {period} at the same moment and wrote first; this run was "
        "rolled back and wrote nothing. Wait for the other run, then run again: unchanged inputs then "
        "keep its proposal, approval or posting",
        period=period,
    )


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
