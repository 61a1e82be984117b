"""Settlement: turn a period's verified usage into exact payouts, once, and tell everyone why.

* ``rounding`` — ``largest_remainder(total, weights)``: exact integer apportionment.
* ``policy`` — ``AllocationPolicy`` (``policies/allocation.yaml``): data / compute / fee basis points.
* ``allocation`` — per-job ``Allocation`` rows: data pool by quantized value (or rows used), compute
  pool to the provider, fee to the exchange; ``allocation_root`` over them.
* ``store`` — the ``settlements`` (one row per period, its state) and ``allocations`` tables.
* ``period`` — ``settle_period(db, store, period=..., policy=..., verify=..., statements_dir=...)``:
  claim, verify receipts, allocate, approve, post in one transaction; idempotent.
* ``result`` — ``Settlement``, the period's one result object (``to_dataframe()``, ``summary()``).
* ``statements`` — per-holder statements as JSON and text: ``write_statements``, ``load_statement``,
  ``find_statement`` (accepts a bare holder id).

Typical use::

    policy = AllocationPolicy.load(settings.allocation_policy_path)
    settlement = settle_period(db, store, period="2026-11", policy=policy, verify=verify,
                               statements_dir=settings.statements_dir)
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
from databright.settlement.period import completed_jobs, inputs_digest, settle_period, settlement_transfers
from databright.settlement.policy import AllocationPolicy
from databright.settlement.result import Settlement, check_period
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
    "OwnerLine",
    "OwnerUsageLike",
    "ReceiptLike",
    "SettledJob",
    "Settlement",
    "Statement",
    "allocate_job",
    "allocation_root",
    "build_statements",
    "check_period",
    "completed_jobs",
    "export_period",
    "find_statement",
    "format_amount",
    "inputs_digest",
    "largest_remainder",
    "load_statement",
    "render_statement",
    "settle_period",
    "settlement_transfers",
    "statement_filename",
    "write_statements",
]
