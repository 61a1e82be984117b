"""Accounts of the exchange ledger: who can hold money, and which accounts may never go negative.

An account id says what it is: ``<kind>:<holder>`` for accounts that belong to someone
(``trainer:acme``, ``contributor:alice``, ``provider:p1``) and a bare name for the exchange's own
accounts (``escrow``, ``data_pool``, ``compute_pool``, ``exchange_fee``). ``external:deposits`` is
the other side of every deposit: money entering the exchange from outside, so it is the one account
allowed to run a debit balance (it goes as negative as the exchange holds money).

Like TigerBeetle, the ledger stores no balances: an account's balance is its credits minus its
debits, computed from the transfers. Every account here except ``external:*`` carries the flag
``debits_must_not_exceed_credits``, so ``Ledger.post`` refuses a transfer that would overdraw it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from databright.errors import LedgerError

#: The one ledger (currency) of the exchange. Transfers may only move money between accounts of
#: the same ledger, as in TigerBeetle; a second currency would get its own number.
DBX_LEDGER = 1

ESCROW = "escrow"
DATA_POOL = "data_pool"
COMPUTE_POOL = "compute_pool"
EXCHANGE_FEE = "exchange_fee"
EXTERNAL_DEPOSITS = "external:deposits"


class AccountKind(StrEnum):
    TRAINER = "trainer"
    CONTRIBUTOR = "contributor"
    PROVIDER = "provider"
    ESCROW = "escrow"
    DATA_POOL = "data_pool"
    COMPUTE_POOL = "compute_pool"
    EXCHANGE_FEE = "exchange_fee"
    EXTERNAL = "external"


_HOLDER_KINDS = (AccountKind.TRAINER, AccountKind.CONTRIBUTOR, AccountKind.PROVIDER, AccountKind.EXTERNAL)
_SYSTEM_KINDS = {
    ESCROW: AccountKind.ESCROW,
    DATA_POOL: AccountKind.DATA_POOL,
    COMPUTE_POOL: AccountKind.COMPUTE_POOL,
    EXCHANGE_FEE: AccountKind.EXCHANGE_FEE,
}
_HOLDER = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


@dataclass(frozen=True)
class Account:
    account_id: str
    kind: AccountKind
    ledger: int = DBX_LEDGER
    debits_must_not_exceed_credits: bool = True

    @property
    def holder(self) -> str:
        """The part after ``kind:`` (``alice`` for ``contributor:alice``), or the id itself."""
        return self.account_id.split(":", 1)[1] if ":" in self.account_id else self.account_id


def _check_holder(kind: AccountKind, holder: str) -> str:
    if not isinstance(holder, str) or not _HOLDER.match(holder):
        raise LedgerError(
            f"{holder!r} cannot name a {kind.value} account: use 1-128 letters, digits, '.', '_', '@' "
            "or '-' (no ':' or spaces)",
            holder=holder,
        )
    return holder


def trainer_account(trainer_id: str) -> str:
    return f"trainer:{_check_holder(AccountKind.TRAINER, trainer_id)}"


def contributor_account(owner: str) -> str:
    return f"contributor:{_check_holder(AccountKind.CONTRIBUTOR, owner)}"


def provider_account(provider_id: str) -> str:
    return f"provider:{_check_holder(AccountKind.PROVIDER, provider_id)}"


def account_for(account_id: str) -> Account:
    """The account an id names, with its kind and flags; unknown shapes are refused."""
    if not isinstance(account_id, str):
        raise LedgerError(f"account id {account_id!r} is not a string", account=account_id)
    if account_id in _SYSTEM_KINDS:
        return Account(account_id, _SYSTEM_KINDS[account_id])
    kind_text, sep, holder = account_id.partition(":")
    kinds = {k.value: k for k in _HOLDER_KINDS}
    if not sep or kind_text not in kinds:
        raise LedgerError(
            f"account id {account_id!r} is not one the exchange knows: write 'trainer:<id>', "
            f"'contributor:<id>', 'provider:<id>', 'external:<name>' or one of {sorted(_SYSTEM_KINDS)}",
            account=account_id,
        )
    kind = kinds[kind_text]
    _check_holder(kind, holder)
    # Money that enters from outside has no balance to protect; every other account does.
    return Account(account_id, kind, debits_must_not_exceed_credits=kind is not AccountKind.EXTERNAL)
