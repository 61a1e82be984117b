"""Settlement pays the data share only on signed valuations bound to the job's usage receipt."""

from __future__ import annotations

import pytest
from settlement_testkit import (
    PERIOD,
    add_job,
    add_valuation,
    make_receipt,
    make_valuation,
    make_verify,
    make_verify_valuation,
    sign_receipt,
    sign_valuation,
    transfers_table,
)

from databright.crypto import SigningKey
from databright.errors import SettlementError
from databright.ledger import deposit, verify_ledger
from databright.settlement import settle_period


def settle(db, store, settings, policy, key):
    return settle_period(
        db,
        store,
        period=PERIOD,
        policy=policy,
        verify=make_verify(key.public_key),
        verify_valuation=make_verify_valuation(key.public_key),
        statements_dir=settings.statements_dir,
    )


@pytest.fixture
def funded(memory_db):
    deposit(memory_db, "acme", 5_000_000, reference="wire-1")
    return memory_db


def test_the_data_share_follows_the_signed_values_not_the_usage_receipt(
    funded, store, settings, policy, session_key
):
    # The usage receipt's own values (in-run contributions) would split 1:3; the valuation says 3:1.
    receipt = make_receipt("j-1", {"alice": (10, 10, 0.1), "bob": (10, 10, 0.3)})
    add_job(funded, store, session_key, receipt, payment=1_000_000, values={"alice": 0.3, "bob": 0.1})
    settlement = settle(funded, store, settings, policy, session_key)
    assert settlement.totals["contributor:alice"] == 525_000
    assert settlement.totals["contributor:bob"] == 175_000
    assert {o.owner: o.value for o in settlement.jobs[0].owners} == {"alice": 0.3, "bob": 0.1}
    assert verify_ledger(funded).ok


def test_a_job_without_a_signed_valuation_rejects_the_period(funded, store, settings, policy, session_key):
    add_job(
        funded, store, session_key, make_receipt("j-1", {"alice": (1, 1, 0.1)}), payment=10_000, valued=False
    )
    before = transfers_table(funded)
    with pytest.raises(
        SettlementError, match=r"job j-1: it has no signed valuation.*databright value 2026-11"
    ):
        settle(funded, store, settings, policy, session_key)
    assert transfers_table(funded) == before


def test_a_valuation_signed_outside_the_session_is_refused(funded, store, settings, policy, session_key):
    receipt = make_receipt("j-1", {"alice": (1, 1, 0.1)})
    envelope = sign_receipt(session_key, receipt)
    add_job(funded, store, session_key, receipt, payment=10_000, envelope=envelope, valued=False)
    valuation = make_valuation(receipt, envelope, {"alice": 5.0})
    add_valuation(
        store, funded, session_key, valuation, sign_valuation(SigningKey.from_seed(b"host"), valuation)
    )
    with pytest.raises(SettlementError, match=r"job j-1: valuation rejected: ReceiptRejected"):
        settle(funded, store, settings, policy, session_key)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("usage_receipt_digest", "0" * 64, "usage_receipt_digest"),
        ("model_digest", "1" * 64, "model_digest"),
        ("dataset_version", 7, "dataset_version"),
        ("dataset_merkle_root", "2" * 64, "dataset_merkle_root"),
    ],
)
def test_a_valuation_of_something_else_is_refused(
    funded, store, settings, policy, session_key, field, value, named
):
    import dataclasses

    receipt = make_receipt("j-1", {"alice": (1, 1, 0.1)})
    envelope = sign_receipt(session_key, receipt)
    add_job(funded, store, session_key, receipt, payment=10_000, envelope=envelope, valued=False)
    valuation = dataclasses.replace(make_valuation(receipt, envelope), **{field: value})
    add_valuation(store, funded, session_key, valuation)
    with pytest.raises(SettlementError, match=rf"does not value its usage receipt: {named}"):
        settle(funded, store, settings, policy, session_key)


def test_a_valuation_naming_other_owners_is_refused(funded, store, settings, policy, session_key):
    receipt = make_receipt("j-1", {"alice": (1, 1, 0.1), "bob": (1, 1, 0.1)})
    envelope = sign_receipt(session_key, receipt)
    add_job(funded, store, session_key, receipt, payment=10_000, envelope=envelope, valued=False)
    add_valuation(store, funded, session_key, make_valuation(receipt, envelope, {"alice": 1.0}))
    with pytest.raises(
        SettlementError, match=r"owners \['alice'\] != the usage receipt's \['alice', 'bob'\]"
    ):
        settle(funded, store, settings, policy, session_key)


def test_an_edited_stored_valuation_is_detected(funded, store, settings, policy, session_key):
    import json

    receipt = make_receipt("j-1", {"alice": (1, 1, 0.1)})
    add_job(funded, store, session_key, receipt, payment=10_000)
    (key,) = funded.query("SELECT receipt_key FROM valuations WHERE job_id = 'j-1'")[0]
    envelope = json.loads(store.get_bytes(key))
    envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"][::-1]
    store.put_bytes(key, json.dumps(envelope).encode())
    with pytest.raises(
        SettlementError, match=r"valuation receipt cannot be read: .*does not match the digest"
    ):
        settle(funded, store, settings, policy, session_key)


def test_a_job_is_valued_once(funded, store, session_key):
    receipt = make_receipt("j-1", {"alice": (1, 1, 0.1)})
    add_job(funded, store, session_key, receipt, payment=10_000)
    envelope = sign_receipt(session_key, receipt)
    with pytest.raises(Exception, match=r"valued by another run"):
        add_valuation(store, funded, session_key, make_valuation(receipt, envelope, {"alice": 2.0}))
    assert funded.query("SELECT count(*) FROM valuations")[0][0] == 1
