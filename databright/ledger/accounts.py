"""Accounts of the exchange ledger: who can hold money, and which accounts may never go negative.

An account id says what it is: ``<kind>:<holder>`` for accounts that belong to someone
(``trainer:acme``, ``contributor:alice``, ``provider:p1``) and a bare name for the exchange's own
accounts. Money follows them in this order::

    external:deposits -> trainer:<id> -> escrow -> revenue -> data_pool / compute_pool / exchange_fee
        -> contributor:<id> / provider:<id> -> payout_clearing -> external:payouts

``escrow`` holds a job's budget from submission until its period is settled; settlement recognises
the job's payment as ``revenue`` and refunds the unused budget to the trainer, and ``revenue`` is
split at once into the two pools and the fee, so it ends every settlement at zero (``payouts =
revenue``). ``payout_clearing`` holds withdrawals that are on their way out of the exchange until the
bank confirms or returns them; ``suspense`` holds money that arrived but cannot be matched to a
trainer yet (an unknown reference). ``external:*`` accounts are the world outside — ``deposits``
where money enters, ``payouts`` where it leaves — so they alone may run a debit balance.

``carry_over:<kind>.<holder>`` (``carry_over:contributor.alice``) holds what a contributor or
provider earned but was not paid because their period total stayed below the policy's minimum
payout: the payout moves there from the holder's account and back in the period whose total
reaches the minimum (``databright.settlement.allocation.carry_over_moves``). One account per holder,
so the ledger itself says how much is carried for whom, and it is flagged like the rest.

Like TigerBeetle, the ledger stores no balances: an account's balance is its credits minus its
debits, computed from the transfers. Every account here except ``external:*`` carries the flag
``debits_must_not_exceed_credits``, so ``Ledger.post`` refuses a transfer that would overdraw it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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
REVENUE = "revenue"
SUSPENSE = "suspense"
PAYOUT_CLEARING = "payout_clearing"
EXTERNAL_DEPOSITS = "external:deposits"
EXTERNAL_PAYOUTS = "external:payouts"


class AccountKind(StrEnum):
    TRAINER = "trainer"
    CONTRIBUTOR = "contributor"
    PROVIDER = "provider"
    ESCROW = "escrow"
    DATA_POOL = "data_pool"
    COMPUTE_POOL = "compute_pool"
    EXCHANGE_FEE = "exchange_fee"
    REVENUE = "revenue"
    SUSPENSE = "suspense"
    PAYOUT_CLEARING = "payout_clearing"
    EXTERNAL = "external"
    CARRY_OVER = "carry_over"


_HOLDER_KINDS = (AccountKind.TRAINER, AccountKind.CONTRIBUTOR, AccountKind.PROVIDER, AccountKind.EXTERNAL)
_HOLDER_KINDS_BY_NAME = {k.value: k for k in _HOLDER_KINDS}
_SYSTEM_KINDS = {
    ESCROW: AccountKind.ESCROW,
    DATA_POOL: AccountKind.DATA_POOL,
    COMPUTE_POOL: AccountKind.COMPUTE_POOL,
    EXCHANGE_FEE: AccountKind.EXCHANGE_FEE,
    REVENUE: AccountKind.REVENUE,
    SUSPENSE: AccountKind.SUSPENSE,
    PAYOUT_CLEARING: AccountKind.PAYOUT_CLEARING,
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
    if kind_text == AccountKind.CARRY_OVER.value and sep:
        carried_holder(account_id)  # refuses a malformed carry-over id with its own message
        return Account(account_id, AccountKind.CARRY_OVER)
    kinds = _HOLDER_KINDS_BY_NAME
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


# --- carry-over of sub-minimum payouts ----------------------------------------------------------

#: The kinds whose payouts can be held back under a minimum payout: the ones settlement pays.
CARRIED_KINDS = (AccountKind.CONTRIBUTOR, AccountKind.PROVIDER)


def carry_over_account(holder_account: str) -> str:
    """``contributor:alice`` -> ``carry_over:contributor.alice``, the account that holds alice's
    sub-minimum payouts. ``.`` joins kind and holder because ``:`` is the kind separator; kind names
    have no ``.``, so the first ``.`` splits them back unambiguously."""
    account = account_for(holder_account)
    if account.kind not in CARRIED_KINDS:
        raise LedgerError(
            f"{holder_account!r} is a {account.kind.value} account; only contributor and provider payouts "
            "are carried over under a minimum payout",
            account=holder_account,
        )
    return f"{AccountKind.CARRY_OVER.value}:{account.kind.value}.{account.holder}"


def carried_holder(carry_account: str) -> str:
    """``carry_over:contributor.alice`` -> ``contributor:alice``: whose money a carry-over account holds."""
    prefix = f"{AccountKind.CARRY_OVER.value}:"
    kind_text, dot, holder = carry_account.removeprefix(prefix).partition(".")
    kinds = {k.value: k for k in CARRIED_KINDS}
    if not carry_account.startswith(prefix) or not dot or kind_text not in kinds:
        raise LedgerError(
            f"{carry_account!r} is not a carry-over account id; write 'carry_over:contributor.<id>' or "
            "'carry_over:provider.<id>' (build it with carry_over_account('contributor:<id>'))",
            account=carry_account,
        )
    return f"{kind_text}:{_check_holder(kinds[kind_text], holder)}"


def carried_balances(balances: Mapping[str, int]) -> dict[str, int]:
    """What is carried for whom, from account balances (``Ledger.balances()`` or any subset of it):
    holder account -> positive carry-over balance, sorted by holder. Other accounts are ignored."""
    prefix = f"{AccountKind.CARRY_OVER.value}:"
    carried = {carried_holder(a): int(b) for a, b in balances.items() if a.startswith(prefix) and b}
    negative = {h: b for h, b in carried.items() if b < 0}
    if negative:
        raise LedgerError(
            f"carry-over balances {negative} are negative, but carry-over accounts may never be "
            "overdrawn; run `databright ledger verify` and correct the transfers it names"
        )
    return dict(sorted(carried.items()))
