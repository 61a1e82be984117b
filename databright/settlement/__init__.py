"""Settlement: turn a period's verified usage into exact payouts, once, and tell everyone why.

* ``rounding`` — ``largest_remainder(total, weights)``: exact integer apportionment.
* ``policy`` — ``AllocationPolicy`` (``policies/allocation.yaml``): data / compute / fee basis points.
* ``allocation`` — per-job ``Allocation`` rows: data pool by quantized value (or rows used), compute
  pool to the provider, fee to the exchange; ``allocation_root`` over them.
* ``store`` — the ``settlements`` (one row per period, its state) and ``allocations`` tables.
* ``inputs`` — a period's completed jobs, verified receipts and valuations, ``inputs_digest``.
* ``period`` — ``propose_period`` (verify, allocate, store the proposal; nothing posted),
  ``post_period`` (post an approved period in one transaction, re-checking its digests) and
  ``settle_period`` (propose -> approve -> post in one call); all idempotent.
* ``review`` — ``approve_period`` / ``reject_period``: the reviewer's decision on a proposal's
  allocation root; money moves only after an approval.
* ``result`` — ``Proposal`` (what finance reviews: ``summary_markdown()``, ``holder_rows()``,
  ``dataset_rows()``, ``chart_png()``) and ``Settlement`` (``to_dataframe()``, ``summary()``).
* ``statements`` — per-holder statements as JSON and text: ``write_statements``, ``load_statement``,
  ``find_statement`` (accepts a bare holder id).

Typical use::

    policy = AllocationPolicy.load(settings.allocation_policy_path)
    proposal = propose_period(db, store, period="2026-11", policy=policy, verify=verify,
                              verify_valuation=verify_valuation)
    approve_period(db, period="2026-11", approver="finance@example.com",
                   allocation_root=proposal.allocation_root)
    settlement = post_period(db, store, period="2026-11", policy=policy, verify=verify,
                             verify_valuation=verify_valuation, statements_dir=settings.statements_dir)
    print(settlement.summary())
"""

from databright.money import format_amount
from databright.settlement.allocation import (
    Allocation,
    OwnerLine,
    OwnerUsageLike,
    ReceiptLike,
    SettledJob,
    allocate_job,
    allocation_root,
)
from databright.settlement.exports import export_period
from databright.settlement.inputs import VerifiedInputs, completed_jobs, inputs_digest
from databright.settlement.period import post_period, propose_period, settle_period, settlement_transfers
from databright.settlement.policy import AllocationPolicy
from databright.settlement.result import DatasetLine, HolderLine, Proposal, Settlement, check_period
from databright.settlement.review import approve_period, reject_period
from databright.settlement.rounding import largest_remainder
from databright.settlement.statements import (
    Statement,
    build_statements,
    find_statement,
    load_statement,
    render_statement,
    statement_filename,
    write_statements,
)

__all__ = [
    "Allocation",
    "AllocationPolicy",
    "DatasetLine",
    "HolderLine",
    "OwnerLine",
    "OwnerUsageLike",
    "Proposal",
    "ReceiptLike",
    "SettledJob",
    "Settlement",
    "Statement",
    "VerifiedInputs",
    "allocate_job",
    "allocation_root",
    "approve_period",
    "build_statements",
    "check_period",
    "completed_jobs",
    "export_period",
    "find_statement",
    "format_amount",
    "inputs_digest",
    "largest_remainder",
    "load_statement",
    "post_period",
    "propose_period",
    "reject_period",
    "render_statement",
    "settle_period",
    "settlement_transfers",
    "statement_filename",
    "write_statements",
]
