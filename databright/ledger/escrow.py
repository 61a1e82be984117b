"""Escrow: a job's budget from submission until its period settles or the job fails.

A trainer's budget is the most a job may cost. It moves to ``escrow`` when the job is submitted
(``escrow_job_payment``) and leaves it exactly once, in one of two ways:

* the job fails: the whole budget goes back to the trainer (``refund_job_payment``);
* the job settles: ``close_escrow`` names the two movements that settlement posts with the rest of
  the period — the job's payment to ``revenue`` (``RECOGNISE``), and what the job did not use,
  ``budget - payment``, back to the trainer (``REFUND``).

So escrow only ever holds the budgets of jobs that are neither failed nor settled, which is what
``databright ledger verify`` checks, job by job.
"""

from __future__ import annotations

from databright.db import ExchangeDB
from databright.errors import LedgerError
from databright.ledger.accounts import ESCROW, REVENUE, trainer_account
from databright.ledger.store import Ledger
from databright.ledger.transfers import Transfer, TransferCode, check_amount
from databright.money import format_minor

#: The codes that take a job's money out of escrow; each job's escrow is left by them once.
RELEASE_CODES = (TransferCode.RECOGNISE, TransferCode.REFUND)


def _job_transfer(
    kind: str,
    code: TransferCode,
    *,
    trainer_id: str,
    job_id: str,
    period: str,
    amount: int,
    debit: str,
    credit: str,
    settlement_id: str | None = None,
) -> Transfer:
    check_amount(amount, f"{kind} amount of job {job_id!r}")
    return Transfer.create(
        {"kind": kind, "job": job_id},
        debit_account=debit,
        credit_account=credit,
        amount=amount,
        code=code,
        period=period,
        settlement_id=settlement_id,
        job_id=job_id,
        memo=f"{kind} job {job_id} of trainer {trainer_id}",
    )


def escrow_job_payment(db: ExchangeDB, *, trainer_id: str, job_id: str, period: str, amount: int) -> Transfer:
    """Move a job's budget (``amount``) from the trainer to escrow, where it waits for settlement.

    Calling it again for the same job with the same amount is a no-op; with another amount it
    raises ``LedgerConflict``.
    """
    account = trainer_account(trainer_id)
    transfer = _job_transfer(
        "escrow",
        TransferCode.ESCROW,
        trainer_id=trainer_id,
        job_id=job_id,
        period=period,
        amount=amount,
        debit=account,
        credit=ESCROW,
    )
    ledger = Ledger(db)
    with db.transaction() as con:
        retry = con.execute(
            "SELECT count(*) FROM transfers WHERE transfer_id = ?", [transfer.transfer_id]
        ).fetchall()[0][0]
        held = ledger.balance(account, con)
        if held < amount and not retry:
            raise LedgerError(
                f"trainer {trainer_id!r} holds {format_minor(held)} minor units, short of the "
                f"{format_minor(amount)} needed to escrow job {job_id!r}; deposit at least "
                f"{format_minor(amount - held)} more and submit again",
                account=account,
                balance=held,
                amount=amount,
            )
        ledger.post(con, [transfer])
    return transfer


def refund_job_payment(db: ExchangeDB, *, trainer_id: str, job_id: str, period: str, amount: int) -> Transfer:
    """Return a failed job's whole escrowed budget to its trainer (idempotent per job)."""
    transfer = _job_transfer(
        "refund",
        TransferCode.REFUND,
        trainer_id=trainer_id,
        job_id=job_id,
        period=period,
        amount=amount,
        debit=ESCROW,
        credit=trainer_account(trainer_id),
    )
    with db.transaction() as con:
        escrowed, released = con.execute(
            """SELECT COALESCE(SUM(amount) FILTER (WHERE code = $2 AND credit_account = $3), 0::HUGEINT),
                      count(*) FILTER (WHERE debit_account = $3 AND transfer_id <> $4)
               FROM transfers WHERE job_id = $1""",
            [job_id, int(TransferCode.ESCROW), ESCROW, transfer.transfer_id],
        ).fetchall()[0]
        if released or int(escrowed) != amount:
            raise LedgerError(
                f"job {job_id!r} cannot be refunded {format_minor(amount)}: escrow holds "
                f"{format_minor(int(escrowed))} for it and {released} movement(s) already took money out "
                "of it; only an escrowed, unsettled job is refunded, for exactly its escrowed budget",
                job_id=job_id,
            )
        Ledger(db).post(con, [transfer])
    return transfer


def close_escrow(
    *, period: str, job_id: str, trainer_id: str, payment: int, budget: int, settlement_id: str
) -> list[Transfer]:
    """The movements that empty a settled job's escrow: its payment to revenue, the rest of its budget
    back to the trainer (nothing when the job used all of it). Posted by settlement, in its transaction."""
    check_amount(payment, f"payment of job {job_id!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < payment:
        raise LedgerError(
            f"job {job_id!r} escrowed a budget of {budget!r}, below its payment {format_minor(payment)}; a "
            "budget is at least the payment — fix the job row before settling",
            job_id=job_id,
        )
    moves = [
        _job_transfer(
            "recognise",
            TransferCode.RECOGNISE,
            trainer_id=trainer_id,
            job_id=job_id,
            period=period,
            amount=payment,
            debit=ESCROW,
            credit=REVENUE,
            settlement_id=settlement_id,
        )
    ]
    if budget > payment:
        moves.append(
            _job_transfer(
                "refund-unused",
                TransferCode.REFUND,
                trainer_id=trainer_id,
                job_id=job_id,
                period=period,
                amount=budget - payment,
                debit=ESCROW,
                credit=trainer_account(trainer_id),
                settlement_id=settlement_id,
            )
        )
    return moves
