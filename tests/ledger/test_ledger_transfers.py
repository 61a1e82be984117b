"""Transfer and account validation: ints only, known accounts, deterministic ids."""

from __future__ import annotations

import pytest

from databright.errors import LedgerError
from databright.ledger import (
    AccountKind,
    Transfer,
    TransferCode,
    account_for,
    contributor_account,
    transfer_id_for,
)


def make(amount=10, **kw):
    fields = {
        "debit_account": "external:deposits",
        "credit_account": "trainer:acme",
        "amount": amount,
        "code": TransferCode.DEPOSIT,
    }
    return Transfer.create({"kind": "test", "n": 1}, **{**fields, **kw})


@pytest.mark.parametrize(
    ("amount", "needle"),
    [
        (1.0, "is a float"),
        (True, "is a bool"),
        ("5", "is a str"),
        (0, "must be positive"),
        (-3, "must be positive"),
    ],
)
def test_amounts_must_be_positive_ints(amount, needle):
    with pytest.raises(LedgerError, match=needle):
        make(amount)


def test_huge_amounts_are_exact_ints():
    assert make(2**100).amount == 2**100


def test_accounts_must_differ_and_be_known():
    with pytest.raises(LedgerError, match="same account"):
        make(debit_account="trainer:acme")
    with pytest.raises(LedgerError, match="not one the exchange knows"):
        make(credit_account="bank:acme")
    with pytest.raises(LedgerError, match="cannot name a contributor account"):
        contributor_account("alice smith")
    with pytest.raises(LedgerError, match="cannot name a trainer account"):
        make(credit_account="trainer:")


def test_codes_are_named_small_ints():
    assert make(code=6).code is TransferCode.PAYOUT
    assert TransferCode.SETTLE_DATA.label == "settle_data"
    with pytest.raises(LedgerError, match="transfer code 99 is unknown"):
        make(code=99)


def test_ids_are_sha256_of_the_idempotency_key():
    a = transfer_id_for({"kind": "escrow", "job": "j-1"})
    assert a == transfer_id_for({"job": "j-1", "kind": "escrow"})
    assert a != transfer_id_for({"kind": "escrow", "job": "j-2"})
    assert len(a) == 64 and int(a, 16) >= 0
    with pytest.raises(LedgerError, match="non-empty dict"):
        transfer_id_for({})
    with pytest.raises(LedgerError, match="64 lowercase hex"):
        Transfer("abc", "external:deposits", "trainer:acme", 1, TransferCode.DEPOSIT)


def test_account_flags_protect_everything_but_external():
    assert account_for("escrow").kind is AccountKind.ESCROW
    assert account_for("contributor:alice").debits_must_not_exceed_credits
    assert account_for("data_pool").debits_must_not_exceed_credits
    assert not account_for("external:deposits").debits_must_not_exceed_credits
    assert account_for("provider:p1").holder == "p1"


def test_differences_name_the_fields():
    assert make(10).differences(make(11)) == ["amount: 10 != 11"]
