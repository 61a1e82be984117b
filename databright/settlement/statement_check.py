"""``statement verify``: re-derive one holder's payout for a period from first principles.

A holder (or their auditor) should not have to trust the statement the exchange wrote. ``check_statement``
starts from what was signed and stored — every completed job's usage receipt and signed valuation in
the object store, each verified again against its attestation result — and the allocation policy,
recomputes every job's allocation exactly as settlement does (``settled_job`` + ``allocate_job``),
and compares:

* the period's allocation root with the one the ``settlements`` row posted (all holders at once:
  nobody's share can have moved without the root changing);
* the holder's re-derived amount, per job and in total, with their statement's lines and total;
* that total with the ledger: the payouts credited to the holder in the period (contributors and
  providers), the settlement fee (the exchange), or the job payments escrowed (trainers).

Every disagreement is reported as one line naming what differs; ``StatementCheck.ok`` is true only
when there is none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from databright.db import ExchangeDB
from databright.errors import DatabrightError, SettlementError
from databright.ledger.accounts import EXCHANGE_FEE, account_for
from databright.ledger.corrections import EFFECTIVE_TRANSFERS
from databright.ledger.transfers import TransferCode
from databright.settlement.allocation import Allocation, allocate_job, allocation_root
from databright.settlement.inputs import check_job, completed_jobs, load_envelope, load_valuation
from databright.settlement.period import carry_lines
from databright.settlement.policy import AllocationPolicy
from databright.settlement.result import check_period
from databright.settlement.statements import find_statement
from databright.storage.objectstore import ObjectStore


@dataclass(frozen=True)
class StatementCheck:
    holder: str
    period: str
    derived_total: int
    statement_total: int
    ledger_total: int
    jobs: int
    failures: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "period": self.period,
            "ok": self.ok,
            "derived_total": self.derived_total,
            "statement_total": self.statement_total,
            "ledger_total": self.ledger_total,
            "jobs": self.jobs,
            "failures": list(self.failures),
        }


def _period_allocations(
    db: ExchangeDB,
    store: ObjectStore,
    period: str,
    policy: AllocationPolicy,
    verify: Callable[[dict[str, Any]], Any],
    verify_valuation: Callable[[dict[str, Any]], Any],
) -> tuple[list[Allocation], int]:
    """Every allocation of the period re-derived from the stored, re-verified receipts and the policy,
    through the same per-job checks settlement runs (``inputs.check_job``)."""
    jobs = completed_jobs(db, period)
    allocations: list[Allocation] = []
    for job in jobs:
        envelope = load_envelope(store, job)
        valuation_envelope = load_valuation(db, store, period, job)
        facts = check_job(db, verify, verify_valuation, period, job, envelope, valuation_envelope)
        allocations += allocate_job(policy, period, facts)
    return allocations, len(jobs)


def _ledger_total(db: ExchangeDB, holder: str, period: str) -> int:
    kind = account_for(holder).kind
    if kind == "trainer":
        # What the trainer paid: the payments recognised as revenue for its jobs (its budgets' unused
        # rest went back to it, and is no part of the statement).
        sql = f"""SELECT COALESCE(SUM(t.amount), 0::HUGEINT)
                 FROM {EFFECTIVE_TRANSFERS} t JOIN jobs j USING (job_id)
                 WHERE j.trainer_id = ? AND t.code = ? AND t.period = ? AND j.status = 'completed'"""
        params: list[Any] = [account_for(holder).holder, int(TransferCode.RECOGNISE), period]
    elif holder == EXCHANGE_FEE:
        sql = f"""SELECT COALESCE(SUM(amount), 0::HUGEINT) FROM {EFFECTIVE_TRANSFERS}
                 WHERE credit_account = ? AND code = ? AND period = ?"""
        params = [holder, int(TransferCode.SETTLE_FEE), period]
    else:
        sql = f"""SELECT COALESCE(SUM(amount), 0::HUGEINT) FROM {EFFECTIVE_TRANSFERS}
                 WHERE credit_account = ? AND code = ? AND period = ?"""
        params = [holder, int(TransferCode.PAYOUT), period]
    return int(db.query(sql, params)[0][0])


def _carry_failures(
    db: ExchangeDB, policy: AllocationPolicy, stated: dict[str, int] | None, holder: str, period: str
) -> list[str]:
    """The statement's carry-over block against the period's carry transfers of the holder, read the
    way the posted settlement reads them (``period.carry_lines``)."""
    with db.connect() as con:
        posted = carry_lines(con, period, policy, (), posted=True).get(holder)
    released, carried = (0, 0) if posted is None else (posted.released, posted.carried_over)
    got = stated or {"released": 0, "carried_over": 0}
    return [
        f"statement says {name} {got.get(name, 0)}, the ledger's carry transfers {want} minor units"
        for name, want in (("released", released), ("carried_over", carried))
        if int(got.get(name, 0)) != want
    ]


def check_statement(
    db: ExchangeDB,
    store: ObjectStore,
    *,
    holder: str,
    period: str,
    policy: AllocationPolicy,
    statements_dir: Path,
    verify: Callable[[dict[str, Any]], Any],
    verify_valuation: Callable[[dict[str, Any]], Any],
) -> StatementCheck:
    """Re-derive ``holder``'s payout for ``period`` and compare it with their statement and the ledger."""
    check_period(period)
    rows = db.query(
        "SELECT state, policy_digest, allocation_root FROM settlements WHERE period = ?", [period]
    )
    if not rows or rows[0][0] != "posted":
        state = rows[0][0] if rows else "never settled"
        raise SettlementError(
            f"period {period} is {state}, so there is no posted payout to verify; settle it first",
            period=period,
        )
    _, policy_digest, posted_root = rows[0]
    if policy.digest != policy_digest:
        raise SettlementError(
            f"period {period} was settled under policy digest {policy_digest[:16]}…, but the policy given "
            f"has {policy.digest[:16]}… (v{policy.version}); verify with the policy file the period was "
            "settled under (it is versioned in git)",
            period=period,
        )
    statement = find_statement(statements_dir, period, holder)
    holder = statement.holder
    failures: list[str] = []
    try:
        allocations, jobs = _period_allocations(db, store, period, policy, verify, verify_valuation)
    except (DatabrightError, OSError, ValueError) as exc:
        raise SettlementError(
            f"period {period} cannot be re-derived from its stored receipts: {type(exc).__name__}: {exc}",
            period=period,
        ) from exc
    root = allocation_root(allocations)
    if root != posted_root:
        failures.append(f"allocation root re-derived {root} != posted {posted_root}")
    is_trainer = statement.kind == "trainer"
    if is_trainer:
        payments = {
            str(job_id): int(payment)
            for job_id, payment in db.query(
                """SELECT job_id, payment FROM jobs
                   WHERE period = ? AND trainer_id = ? AND status = 'completed'""",
                [period, holder.partition(":")[2]],
            )
        }
        derived_by_job = payments
    else:
        derived_by_job = {}
        for a in allocations:
            if a.holder == holder:
                derived_by_job[a.job_id] = derived_by_job.get(a.job_id, 0) + a.amount
    derived = sum(derived_by_job.values())
    key = "payment" if is_trainer else "amount"
    stated_by_job: dict[str, int] = {}
    for line in statement.lines:
        stated_by_job[str(line["job_id"])] = stated_by_job.get(str(line["job_id"]), 0) + int(line[key])
    for job_id in sorted(set(derived_by_job) | set(stated_by_job)):
        want, got = derived_by_job.get(job_id, 0), stated_by_job.get(job_id, 0)
        if want != got:
            failures.append(f"job {job_id}: statement says {got}, re-derived {want} minor units")
    if statement.total != derived:
        failures.append(f"statement total {statement.total} != re-derived {derived} minor units")
    ledger = _ledger_total(db, holder, period)
    if ledger != derived:
        failures.append(f"ledger total {ledger} != re-derived {derived} minor units")
    failures += _carry_failures(db, policy, statement.carry, holder, period)
    return StatementCheck(
        holder=holder,
        period=period,
        derived_total=derived,
        statement_total=statement.total,
        ledger_total=ledger,
        jobs=jobs,
        failures=tuple(failures),
    )
