"""Transfers: the only way money moves, one debit and one credit of the same integer amount.

A transfer's id is the hex sha256 of the canonical JSON of its *idempotency key* (for example
``{"kind": "escrow", "job": "j-1"}``), so asking twice for the same movement names the same
transfer and the ledger can tell a retry (same id, same content: nothing happens) from a conflict
(same id, different content: ``LedgerConflict``). Amounts are Python ints in minor units; floats
and bools are refused at construction so a rounding error can never reach the ledger.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any

from databright.crypto import digest_json
from databright.errors import LedgerError
from databright.ledger.accounts import DBX_LEDGER, account_for


class TransferCode(IntEnum):
    """Why money moved (TigerBeetle's ``code``): a small int in the table, a name in reports."""

    DEPOSIT = 1  # external:deposits -> trainer:<id>
    ESCROW = 2  # trainer:<id> -> escrow, a job's budget when it is submitted
    SETTLE_DATA = 3  # revenue -> data_pool, a job's data share
    SETTLE_COMPUTE = 4  # revenue -> compute_pool, a job's compute share
    SETTLE_FEE = 5  # revenue -> exchange_fee
    PAYOUT = 6  # data_pool -> contributor:<id>, compute_pool -> provider:<id>
    REFUND = 7  # escrow -> trainer:<id>: a failed job's budget, or the unused rest of a settled one's
    REVERSAL = 8  # a correction: the mirror of an earlier transfer
    CARRY_OVER = 9  # contributor/provider -> carry_over:<kind>.<id>, a payout below the policy minimum
    CARRY_RELEASE = 10  # carry_over:<kind>.<id> -> the holder, once their due reaches the minimum
    RECOGNISE = 11  # escrow -> revenue, a settled job's payment (its period's revenue)
    DEPOSIT_UNMATCHED = 12  # external:deposits -> suspense, money whose reference names no trainer yet
    SUSPENSE_MATCHED = 13  # suspense -> trainer:<id>, once the deposit is matched to its trainer
    WITHDRAWAL = 14  # contributor/provider -> payout_clearing, a payout requested to the holder's bank
    WITHDRAWAL_SENT = 15  # payout_clearing -> external:payouts, the bank confirmed it left
    WITHDRAWAL_RETURNED = 16  # payout_clearing -> the holder, the bank returned it

    @property
    def label(self) -> str:
        return self.name.lower()


_HEX64 = re.compile(r"[0-9a-f]{64}")

#: The codes that move sub-minimum payouts to and from the holders' carry-over accounts.
CARRY_CODES = (TransferCode.CARRY_OVER, TransferCode.CARRY_RELEASE)

#: The codes that split a job's recognised payment (revenue) into pools and fee at settlement.
SETTLE_CODES = (TransferCode.SETTLE_DATA, TransferCode.SETTLE_COMPUTE, TransferCode.SETTLE_FEE)


def transfer_id_for(idempotency_key: dict[str, Any]) -> str:
    """Deterministic transfer id: hex sha256 over the canonical JSON of the idempotency key."""
    if not isinstance(idempotency_key, dict) or not idempotency_key:
        raise LedgerError(
            f"an idempotency key is a non-empty dict such as {{'kind': 'escrow', 'job': 'j-1'}}, "
            f"got {idempotency_key!r}"
        )
    return digest_json(idempotency_key)


def check_amount(amount: object, what: str = "amount") -> int:
    """Money is a positive Python int of minor units; anything else is refused with the value."""
    # bool is an int subclass, and True would silently move one minor unit.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise LedgerError(
            f"{what} {amount!r} is a {type(amount).__name__}; money is an int of minor units "
            "(e.g. 1_500_000 for 1.5 DBX) — convert at the edge with exact decimal arithmetic",
            amount=amount,
        )
    if amount <= 0:
        raise LedgerError(f"{what} {amount} must be positive; a transfer moves at least one minor unit")
    return amount


@dataclass(frozen=True)
class Transfer:
    transfer_id: str
    debit_account: str
    credit_account: str
    amount: int
    code: TransferCode
    ledger: int = DBX_LEDGER
    period: str | None = None
    settlement_id: str | None = None
    job_id: str | None = None
    memo: str = ""

    def __post_init__(self) -> None:
        check_amount(self.amount, f"transfer {self.transfer_id[:12]} amount")
        if not isinstance(self.code, TransferCode):
            try:
                object.__setattr__(self, "code", TransferCode(self.code))
            except ValueError as exc:
                names = ", ".join(f"{c.value}={c.label}" for c in TransferCode)
                raise LedgerError(f"transfer code {self.code!r} is unknown; use one of {names}") from exc
        if not isinstance(self.transfer_id, str) or not _HEX64.fullmatch(self.transfer_id):
            raise LedgerError(
                f"transfer id {self.transfer_id!r} is not 64 lowercase hex digits; build transfers with "
                "Transfer.create(key, ...) so the id is derived from the idempotency key"
            )
        if self.debit_account == self.credit_account:
            raise LedgerError(
                f"transfer {self.transfer_id[:12]} debits and credits the same account "
                f"{self.debit_account!r}; a transfer must move money between two accounts"
            )
        for account_id in (self.debit_account, self.credit_account):
            account_for(account_id)

    @classmethod
    def create(
        cls,
        idempotency_key: dict[str, Any],
        *,
        debit_account: str,
        credit_account: str,
        amount: int,
        code: TransferCode,
        ledger: int = DBX_LEDGER,
        period: str | None = None,
        settlement_id: str | None = None,
        job_id: str | None = None,
        memo: str = "",
    ) -> Transfer:
        return cls(
            transfer_id=transfer_id_for(idempotency_key),
            debit_account=debit_account,
            credit_account=credit_account,
            amount=amount,
            code=code,
            ledger=ledger,
            period=period,
            settlement_id=settlement_id,
            job_id=job_id,
            memo=memo,
        )

    def row(self) -> list[Any]:
        """Column values in table order, without ``created_at``."""
        return [
            self.transfer_id,
            self.debit_account,
            self.credit_account,
            self.amount,
            self.ledger,
            int(self.code),
            self.period,
            self.settlement_id,
            self.job_id,
            self.memo,
        ]

    @classmethod
    def from_row(cls, row: tuple[Any, ...] | list[Any]) -> Transfer:
        return cls(
            transfer_id=row[0],
            debit_account=row[1],
            credit_account=row[2],
            amount=int(row[3]),
            ledger=int(row[4]),
            code=TransferCode(int(row[5])),
            period=row[6],
            settlement_id=row[7],
            job_id=row[8],
            memo=row[9] or "",
        )

    def differences(self, other: Transfer) -> list[str]:
        """Names and values of the fields where two transfers with one id disagree."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]
