"""Corrections: history is never edited, a wrong transfer is reversed and, if needed, replaced.

``reverse_transfer`` posts the mirror of a posted transfer (credit and debit swapped, same amount,
code ``REVERSAL``); ``correct_transfer`` posts that reversal and the right movement in one
transaction. Both are idempotent: the reversal's id is the digest of ``{"kind": "reversal", "of":
<id>}``, so a transfer can be reversed once, and a retried correction posts nothing new.

The reversal names what it reverses in its memo (``reversal of <id>: <reason>``); because its id is
derived from that id, ``databright ledger verify`` can check the link instead of trusting it, and
its invariants then read the *effective* transfers — every transfer except reversed ones and their
reversals (``EFFECTIVE_TRANSFERS``), which is what the books say after the correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from databright.db import ExchangeDB
from databright.errors import LedgerError
from databright.ledger.store import Ledger
from databright.ledger.transfers import Transfer, TransferCode, check_amount, transfer_id_for

if TYPE_CHECKING:
    import duckdb

_MEMO = "reversal of "

#: A subquery of the transfers as they stand after corrections; use it as ``FROM {EFFECTIVE_TRANSFERS}``.
EFFECTIVE_TRANSFERS = f"""(
    SELECT * FROM transfers
    WHERE code <> {int(TransferCode.REVERSAL)}
      AND transfer_id NOT IN (
          SELECT regexp_extract(memo, '^{_MEMO}([0-9a-f]{{64}})', 1) FROM transfers
          WHERE code = {int(TransferCode.REVERSAL)})
)"""


def reversal_key(transfer_id: str) -> dict[str, str]:
    return {"kind": "reversal", "of": transfer_id}


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise LedgerError(
            "a correction needs a reason (what was wrong), kept in the ledger with it; pass --reason"
        )
    return " ".join(reason.split())


def _original(db: ExchangeDB, con: duckdb.DuckDBPyConnection, transfer_id: str) -> Transfer:
    found = Ledger(db).transfers_by_id([transfer_id], con)
    if not found:
        raise LedgerError(
            f"no transfer {transfer_id!r} is posted; name one by its full 64-hex id "
            "(`databright statement show` and the exports list them)",
            transfer_id=transfer_id,
        )
    original = found[0]
    if original.code is TransferCode.REVERSAL:
        raise LedgerError(
            f"transfer {transfer_id[:12]} is itself a reversal; post the movement again under a new "
            "idempotency key instead of reversing the reversal",
            transfer_id=transfer_id,
        )
    return original


def _reversal(original: Transfer, reason: str) -> Transfer:
    return Transfer.create(
        reversal_key(original.transfer_id),
        debit_account=original.credit_account,
        credit_account=original.debit_account,
        amount=original.amount,
        code=TransferCode.REVERSAL,
        ledger=original.ledger,
        period=original.period,
        settlement_id=original.settlement_id,
        job_id=original.job_id,
        memo=f"{_MEMO}{original.transfer_id}: {reason}",
    )


def reverse_transfer(db: ExchangeDB, transfer_id: str, reason: str) -> Transfer:
    """Post the mirror of ``transfer_id``; reversing it again returns the same reversal.

    Refused (nothing posted) when the account it credited no longer holds the amount, e.g. a payout
    the holder already withdrew: recover the money first.
    """
    reason = _reason(reason)
    with db.transaction() as con:
        reversal = _reversal(_original(db, con, transfer_id), reason)
        stored = Ledger(db).transfers_by_id([reversal.transfer_id], con)
        if stored:
            return stored[0]  # reversed before, perhaps for another reason: the first one stands
        Ledger(db).post(con, [reversal])
    return reversal


@dataclass(frozen=True)
class Correction:
    reversal: Transfer
    replacement: Transfer


def correct_transfer(
    db: ExchangeDB,
    transfer_id: str,
    *,
    reason: str,
    amount: int | None = None,
    debit_account: str | None = None,
    credit_account: str | None = None,
) -> Correction:
    """Reverse ``transfer_id`` and post the right movement (the original with the given fields
    changed) in one transaction; the same call again posts nothing."""
    reason = _reason(reason)
    with db.transaction() as con:
        original = _original(db, con, transfer_id)
        debit = debit_account or original.debit_account
        credit = credit_account or original.credit_account
        moved = original.amount if amount is None else check_amount(amount, "corrected amount")
        if (debit, credit, moved) == (original.debit_account, original.credit_account, original.amount):
            raise LedgerError(
                f"the correction of {transfer_id[:12]} changes nothing; give the right --amount, "
                "--debit or --credit, or reverse it alone",
                transfer_id=transfer_id,
            )
        reversal = _reversal(original, reason)
        replacement = Transfer.create(
            {
                "kind": "correction",
                "of": original.transfer_id,
                "debit": debit,
                "credit": credit,
                "amount": str(moved),
            },
            debit_account=debit,
            credit_account=credit,
            amount=moved,
            code=original.code,
            ledger=original.ledger,
            period=original.period,
            settlement_id=original.settlement_id,
            job_id=original.job_id,
            memo=f"correction of {original.transfer_id}: {reason}",
        )
        # What is already posted stands (a retry, perhaps worded otherwise): the reversal and the
        # replacement are each posted once, whatever reason a later call gives.
        stored = {
            t.transfer_id: t
            for t in Ledger(db).transfers_by_id([reversal.transfer_id, replacement.transfer_id], con)
        }
        reversal = stored.get(reversal.transfer_id, reversal)
        replacement = stored.get(replacement.transfer_id, replacement)
        Ledger(db).post(con, [reversal, replacement])
    return Correction(reversal, replacement)


def reversal_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every reversal must name a posted transfer, mirror it exactly and carry the id derived from it."""
    rows = con.execute(
        f"""SELECT r.transfer_id, regexp_extract(r.memo, '^{_MEMO}([0-9a-f]{{64}})', 1),
                   r.debit_account, r.credit_account, r.amount, o.transfer_id, o.debit_account,
                   o.credit_account, o.amount
            FROM transfers r
            LEFT JOIN transfers o ON o.transfer_id = regexp_extract(r.memo, '^{_MEMO}([0-9a-f]{{64}})', 1)
            WHERE r.code = ? ORDER BY r.transfer_id""",
        [int(TransferCode.REVERSAL)],
    ).fetchall()
    problems = []
    for rid, named, r_debit, r_credit, r_amount, oid, o_debit, o_credit, o_amount in rows:
        if not named or oid is None:
            problems.append(
                f"reversal {rid[:12]} names no posted transfer (memo must say 'reversal of <id>')"
            )
        elif rid != transfer_id_for(reversal_key(named)):
            problems.append(
                f"reversal {rid[:12]} claims to reverse {named[:12]} but its id is not derived from it"
            )
        elif (r_debit, r_credit, int(r_amount)) != (o_credit, o_debit, int(o_amount)):
            problems.append(
                f"reversal {rid[:12]} does not mirror {named[:12]} (accounts swapped, same amount)"
            )
    return problems
