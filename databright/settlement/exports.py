"""Exports of a settled period for audit and for ``dvc repro``: metrics, the ledger, statements.

Everything written is a pure function of the settlement and the ledger rows, in a fixed order, so
two runs over the same inputs write the same bytes wherever the inputs are deterministic (the
allocation root always is; receipts carry timestamps, so the inputs digest is not).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from databright.db import ExchangeDB
from databright.ledger import Ledger
from databright.settlement.result import Settlement

LEDGER_COLUMNS = (
    "transfer_id", "debit_account", "credit_account", "amount", "ledger", "code", "period", "settlement_id",
    "job_id", "memo",
)  # fmt: skip


def export_period(
    db: ExchangeDB, settlement: Settlement, statements_dir: Path, out_dir: Path
) -> dict[str, Path]:
    """Write ``metrics.json``, ``ledger.csv`` (the period's transfers) and ``statements/`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "period": settlement.period,
        "state": settlement.state,
        "assurance": settlement.assurance,
        "policy": settlement.policy.label,
        "allocation_root": settlement.allocation_root,
        "jobs": len(settlement.jobs),
        "paid_minor_units": settlement.total_paid,
        "payouts_minor_units": dict(sorted(settlement.totals.items())),
    }
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    ledger_path = out_dir / "ledger.csv"
    transfers = sorted(Ledger(db).transfers(period=settlement.period), key=lambda t: t.transfer_id)
    with ledger_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LEDGER_COLUMNS)
        writer.writerows(t.row() for t in transfers)

    statements_out = out_dir / "statements"
    if statements_out.exists():
        shutil.rmtree(statements_out)
    shutil.copytree(statements_dir / settlement.period, statements_out)
    return {"metrics": metrics_path, "ledger": ledger_path, "statements": statements_out}
