"""Exports of a settled period for audit and for ``dvc repro``: metrics, the ledger, statements.

Everything written is a pure function of the settlement and the ledger rows, in a fixed order, so
two runs over the same inputs write the same bytes wherever the inputs are deterministic (the
allocation root always is; receipts carry timestamps, so the inputs digest is not).

Statement lines are exported as one table, ``statement_lines.parquet`` (typed: amounts as exact
decimal-free int64 where they fit, else text) and ``statement_lines.csv``. Every CSV text cell
that a spreadsheet would read as a formula — starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return (OWASP's list) — is written with a leading apostrophe (``csv_safe``), so a holder
named ``=HYPERLINK(...)`` stays text. Numbers are written as numbers and never escaped.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from databright.db import ExchangeDB
from databright.ledger import Ledger
from databright.settlement.result import Settlement

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
STATEMENT_LINE_COLUMNS = (
    "holder", "kind", "job_id", "dataset", "dataset_version", "rows_used", "visits", "value", "weight",
    "work_units", "amount", "payment", "basis", "assurance",
)  # fmt: skip

LEDGER_COLUMNS = (
    "transfer_id", "debit_account", "credit_account", "amount", "ledger", "code", "period", "settlement_id",
    "job_id", "memo",
)  # fmt: skip


def csv_safe(cell: object) -> object:
    """``cell`` unchanged, unless it is text a spreadsheet would evaluate: then prefixed with ``'``."""
    if isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES):
        return "'" + cell
    return cell


def statement_line_rows(settlement: Settlement) -> list[dict[str, object]]:
    """One row per statement line of every holder, in holder then job order."""
    from databright.settlement.statements import build_statements

    rows = []
    for statement in sorted(build_statements(settlement), key=lambda s: s.holder):
        for line in statement.lines:
            row: dict[str, object] = {c: line.get(c) for c in STATEMENT_LINE_COLUMNS}
            row["holder"], row["kind"] = statement.holder, statement.kind
            row["assurance"] = line.get("assurance", statement.assurance)
            rows.append(row)
    return rows


def _write_csv(
    path: Path, header: tuple[str, ...], rows: list[tuple[object, ...]] | list[list[object]]
) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([csv_safe(c) for c in row] for row in rows)


def export_statement_lines(settlement: Settlement, out_dir: Path) -> dict[str, Path]:
    """``statement_lines.parquet`` and ``statement_lines.csv`` (formula-safe) in ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = statement_line_rows(settlement)
    columns = {c: [r[c] for r in rows] for c in STATEMENT_LINE_COLUMNS}
    # Minor units can exceed int64 in principle; Parquet gets them as exact decimal text then.
    money = {"amount", "payment"}
    fits = all(
        v is None or -(2**63) <= int(v) < 2**63  # type: ignore[call-overload]
        for c in money
        for v in columns[c]
    )
    arrays = {}
    for name, values in columns.items():
        if name in money and not fits:
            arrays[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
        else:
            arrays[name] = pa.array(values)
    parquet_path = out_dir / "statement_lines.parquet"
    pq.write_table(pa.table(arrays), parquet_path)
    csv_path = out_dir / "statement_lines.csv"
    _write_csv(csv_path, STATEMENT_LINE_COLUMNS, [[r[c] for c in STATEMENT_LINE_COLUMNS] for r in rows])
    return {"statement_lines_parquet": parquet_path, "statement_lines_csv": csv_path}


def export_period(
    db: ExchangeDB, settlement: Settlement, statements_dir: Path, out_dir: Path
) -> dict[str, Path]:
    """Write ``metrics.json``, ``ledger.csv`` (the period's transfers), ``statements/`` and the
    statement lines (Parquet and CSV) to ``out_dir``."""
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
    _write_csv(ledger_path, LEDGER_COLUMNS, [list(t.row()) for t in transfers])

    statements_out = out_dir / "statements"
    if statements_out.exists():
        shutil.rmtree(statements_out)
    shutil.copytree(statements_dir / settlement.period, statements_out)
    tables = export_statement_lines(settlement, out_dir)
    return {"metrics": metrics_path, "ledger": ledger_path, "statements": statements_out, **tables}
