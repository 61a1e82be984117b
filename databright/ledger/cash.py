"""Money crossing the exchange's boundary: deposits in, withdrawals out, and what waits in between.

Every movement is named by an external *reference* (a bank or payment-provider id), which makes it
idempotent: the same reference posts once, a retry is a no-op, the same reference with other content
is a ``LedgerConflict``.

In::

    deposit            external:deposits -> trainer:<id>      the reference names the trainer
    deposit_unmatched  external:deposits -> suspense          money arrived, nobody matched yet
    match_deposit      suspense -> trainer:<id>               an operator matched it

Out::

    request_withdrawal  contributor|provider|trainer:<id> -> payout_clearing   on its way to the bank
    confirm_withdrawal  payout_clearing -> external:payouts                    the bank sent it
    return_withdrawal   payout_clearing -> the holder                          the bank returned it

So ``suspense`` holds exactly the unmatched deposits and ``payout_clearing`` exactly the withdrawals
in flight; ``databright ledger verify`` checks both.
"""

from __future__ import annotations

from databright.db import ExchangeDB
from databright.errors import LedgerError
from databright.ledger.accounts import (
    EXTERNAL_DEPOSITS,
    EXTERNAL_PAYOUTS,
    PAYOUT_CLEARING,
    SUSPENSE,
    AccountKind,
    account_for,
    trainer_account,
)
from databright.ledger.store import Ledger
from databright.ledger.transfers import Transfer, TransferCode, check_amount, transfer_id_for
from databright.money import format_minor

#: Holders that may withdraw: everyone the exchange owes money to.
WITHDRAWING_KINDS = (AccountKind.CONTRIBUTOR, AccountKind.PROVIDER, AccountKind.TRAINER)
_OUTCOMES = {"sent": TransferCode.WITHDRAWAL_SENT, "returned": TransferCode.WITHDRAWAL_RETURNED}


def _reference(reference: object, what: str) -> str:
    if not isinstance(reference, str) or not reference.strip():
        raise LedgerError(
            f"{what} reference {reference!r} is empty; pass the payment's external reference (e.g. the "
            "bank's transaction id) so a retried call is not counted twice"
        )
    return reference.strip()


def _post_one(db: ExchangeDB, transfer: Transfer) -> Transfer:
    with db.transaction() as con:
        Ledger(db).post(con, [transfer])
    return transfer


def _posted(db: ExchangeDB, key: dict[str, str]) -> Transfer | None:
    found = Ledger(db).transfers_by_id([transfer_id_for(key)])
    return found[0] if found else None


# --- in -------------------------------------------------------------------------------------------


def deposit(db: ExchangeDB, trainer_id: str, amount: int, reference: str) -> Transfer:
    """Credit a trainer with money received from outside; repeating the reference is a no-op."""
    check_amount(amount, f"deposit for trainer {trainer_id!r}")
    reference = _reference(reference, "deposit")
    return _post_one(
        db,
        Transfer.create(
            {"kind": "deposit", "trainer": trainer_id, "reference": reference},
            debit_account=EXTERNAL_DEPOSITS,
            credit_account=trainer_account(trainer_id),
            amount=amount,
            code=TransferCode.DEPOSIT,
            memo=f"deposit {reference}",
        ),
    )


def _unmatched_key(reference: str) -> dict[str, str]:
    return {"kind": "deposit-unmatched", "reference": reference}


def deposit_unmatched(db: ExchangeDB, amount: int, reference: str) -> Transfer:
    """Book money that arrived under a reference naming no trainer: it waits in ``suspense``."""
    check_amount(amount, f"unmatched deposit {reference!r}")
    reference = _reference(reference, "deposit")
    return _post_one(
        db,
        Transfer.create(
            _unmatched_key(reference),
            debit_account=EXTERNAL_DEPOSITS,
            credit_account=SUSPENSE,
            amount=amount,
            code=TransferCode.DEPOSIT_UNMATCHED,
            memo=f"unmatched deposit {reference}",
        ),
    )


def match_deposit(db: ExchangeDB, reference: str, trainer_id: str) -> Transfer:
    """Move an unmatched deposit from ``suspense`` to the trainer it belongs to (once per reference)."""
    reference = _reference(reference, "deposit")
    held = _posted(db, _unmatched_key(reference))
    if held is None:
        raise LedgerError(
            f"no unmatched deposit has reference {reference!r}; book it first with "
            f"`databright ledger deposit-unmatched AMOUNT --reference {reference}`",
            reference=reference,
        )
    return _post_one(
        db,
        Transfer.create(
            {"kind": "suspense-matched", "reference": reference},
            debit_account=SUSPENSE,
            credit_account=trainer_account(trainer_id),
            amount=held.amount,
            code=TransferCode.SUSPENSE_MATCHED,
            memo=f"deposit {reference} matched to trainer {trainer_id}",
        ),
    )


# --- out ------------------------------------------------------------------------------------------


def _withdrawal_key(holder: str, reference: str) -> dict[str, str]:
    return {"kind": "withdrawal", "holder": holder, "reference": reference}


def request_withdrawal(db: ExchangeDB, holder: str, amount: int, reference: str) -> Transfer:
    """Move ``amount`` from a holder's account to ``payout_clearing`` for the bank to send.

    ``holder`` is an account id (``contributor:alice``, ``provider:p1``, ``trainer:acme``); the
    holder must have the money now.
    """
    account = account_for(holder)
    if account.kind not in WITHDRAWING_KINDS:
        raise LedgerError(
            f"{holder!r} is a {account.kind.value} account; only contributor, provider and trainer "
            "accounts withdraw (write e.g. 'contributor:alice')",
            account=holder,
        )
    check_amount(amount, f"withdrawal by {holder!r}")
    reference = _reference(reference, "withdrawal")
    transfer = Transfer.create(
        _withdrawal_key(holder, reference),
        debit_account=holder,
        credit_account=PAYOUT_CLEARING,
        amount=amount,
        code=TransferCode.WITHDRAWAL,
        memo=f"withdrawal {reference}",
    )
    ledger = Ledger(db)
    with db.transaction() as con:
        held = ledger.balance(holder, con)
        retry = bool(ledger.transfers_by_id([transfer.transfer_id], con))
        if held < amount and not retry:
            raise LedgerError(
                f"{holder!r} holds {format_minor(held)} minor units, less than the {format_minor(amount)} "
                f"asked for; withdraw at most {format_minor(held)}",
                account=holder,
                balance=held,
                amount=amount,
            )
        ledger.post(con, [transfer])
    return transfer


def _settle_withdrawal(db: ExchangeDB, holder: str, reference: str, outcome: str) -> Transfer:
    reference = _reference(reference, "withdrawal")
    requested = _posted(db, _withdrawal_key(holder, reference))
    if requested is None:
        raise LedgerError(
            f"{holder!r} has no withdrawal with reference {reference!r}; request it first with "
            f"`databright ledger withdraw {holder} AMOUNT --reference {reference}`",
            reference=reference,
        )
    # Sent and returned share one idempotency key, so a withdrawal has at most one outcome even when
    # two operators record different ones at the same moment: the second id collides with the first.
    key = {"kind": "withdrawal-outcome", "holder": holder, "reference": reference}
    recorded = _posted(db, key)
    if recorded is not None and recorded.code is not _OUTCOMES[outcome]:
        raise LedgerError(
            f"withdrawal {reference!r} of {holder!r} is already marked "
            f"{'sent' if recorded.code is TransferCode.WITHDRAWAL_SENT else 'returned'}; a withdrawal is "
            "either sent or returned, once — correct a wrong outcome with a reversing transfer",
            reference=reference,
        )
    sent = outcome == "sent"
    return _post_one(
        db,
        Transfer.create(
            key,
            debit_account=PAYOUT_CLEARING,
            credit_account=EXTERNAL_PAYOUTS if sent else holder,
            amount=requested.amount,
            code=_OUTCOMES[outcome],
            memo=f"withdrawal {reference} {outcome}",
        ),
    )


def confirm_withdrawal(db: ExchangeDB, holder: str, reference: str) -> Transfer:
    """The bank sent the withdrawal: it leaves ``payout_clearing`` for ``external:payouts``."""
    return _settle_withdrawal(db, holder, reference, "sent")


def return_withdrawal(db: ExchangeDB, holder: str, reference: str) -> Transfer:
    """The bank returned the withdrawal: it goes back from ``payout_clearing`` to the holder."""
    return _settle_withdrawal(db, holder, reference, "returned")
