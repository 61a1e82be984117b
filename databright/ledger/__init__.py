"""Ledger: a TigerBeetle-shaped double-entry ledger in the exchange database.

* ``accounts`` — account ids (``trainer:acme``, ``contributor:alice``, ``escrow``, ...) and their
  flags; every account but ``external:*`` may never be overdrawn.
* ``transfers`` — ``Transfer`` (integer minor units, deterministic id from an idempotency key) and
  ``TransferCode`` (deposit, escrow, settle_data, settle_compute, settle_fee, payout, refund, ...).
* ``store`` — ``Ledger(db).post(con, transfers)`` inside the caller's transaction: retries are no-ops,
  conflicting retries raise ``LedgerConflict``, overdrafts are refused whole; ``balance``,
  ``account_balances``.
* ``escrow`` — a job's budget: ``escrow_job_payment`` at submission, ``refund_job_payment`` when it
  fails, ``close_escrow`` (payment to revenue, unused budget back) when its period settles.
* ``corrections`` — ``reverse_transfer`` and ``correct_transfer`` (reversal plus the right movement,
  one transaction); ``ledger verify`` checks every reversal and reads the effective transfers.
* ``cash`` — the boundary: ``deposit``, ``deposit_unmatched`` / ``match_deposit`` (through
  ``suspense``), ``request_withdrawal`` / ``confirm_withdrawal`` / ``return_withdrawal`` (through
  ``payout_clearing``).
* ``audit_log`` — the audit chain: every posted batch of transfers and every settlement write appends
  a hash-chained ``audit_log`` row in its own transaction (``audit_rows`` computes what a row says
  about the rows it logs); ``checkpoint(db, store, load_audit_key(keys_dir))`` signs
  the RFC 6962 root and exports it to ``audit/checkpoints/``; ``verify_audit_chain`` checks it all.
* ``verify`` — ``verify_ledger(db, store=..., audit_key=...)`` re-checks every invariant from the rows
  (the audit chain when given the store and key) and returns a ``LedgerReport``.

Typical use::

    deposit(db, "acme", 5_000_000, reference="wire-0042")
    escrow_job_payment(db, trainer_id="acme", job_id="j-1", period="2026-11", amount=1_000_000)
    assert verify_ledger(db).ok
"""

from databright.ledger.accounts import (
    COMPUTE_POOL,
    DATA_POOL,
    DBX_LEDGER,
    ESCROW,
    EXCHANGE_FEE,
    EXTERNAL_DEPOSITS,
    EXTERNAL_PAYOUTS,
    PAYOUT_CLEARING,
    REVENUE,
    SUSPENSE,
    Account,
    AccountKind,
    account_for,
    contributor_account,
    provider_account,
    trainer_account,
)
from databright.ledger.audit_log import (
    AuditChainReport,
    Checkpoint,
    audit_public_key,
    checkpoint,
    load_audit_key,
    verify_audit_chain,
)
from databright.ledger.cash import (
    confirm_withdrawal,
    deposit,
    deposit_unmatched,
    match_deposit,
    request_withdrawal,
    return_withdrawal,
)
from databright.ledger.corrections import Correction, correct_transfer, reverse_transfer
from databright.ledger.escrow import close_escrow, escrow_job_payment, refund_job_payment
from databright.ledger.store import Ledger, account_balances, balance
from databright.ledger.transfers import SETTLE_CODES, Transfer, TransferCode, transfer_id_for
from databright.ledger.verify import Check, LedgerReport, verify_ledger

__all__ = [
    "COMPUTE_POOL",
    "DATA_POOL",
    "DBX_LEDGER",
    "ESCROW",
    "EXCHANGE_FEE",
    "EXTERNAL_DEPOSITS",
    "EXTERNAL_PAYOUTS",
    "PAYOUT_CLEARING",
    "REVENUE",
    "SETTLE_CODES",
    "SUSPENSE",
    "Account",
    "AccountKind",
    "AuditChainReport",
    "Check",
    "Checkpoint",
    "Correction",
    "Ledger",
    "LedgerReport",
    "Transfer",
    "TransferCode",
    "account_balances",
    "account_for",
    "audit_public_key",
    "balance",
    "checkpoint",
    "close_escrow",
    "confirm_withdrawal",
    "contributor_account",
    "correct_transfer",
    "deposit",
    "deposit_unmatched",
    "escrow_job_payment",
    "load_audit_key",
    "match_deposit",
    "provider_account",
    "refund_job_payment",
    "request_withdrawal",
    "return_withdrawal",
    "reverse_transfer",
    "trainer_account",
    "transfer_id_for",
    "verify_audit_chain",
    "verify_ledger",
]
