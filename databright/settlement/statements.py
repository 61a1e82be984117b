"""Statements: what each holder was paid (or charged) in a period, and how they can check it.

One statement per holder and period, as JSON (for machines) and text (for people), written to
``<statements_dir>/<period>/<holder>.json|.txt``. A contributor's statement lists every job that
used their data with the rows used, visits, value and weight from the signed usage receipt, the
amount, and the receipt's records root and the dataset's Merkle root, so they can check the
receipt and their records' inclusion themselves. Amounts are kept as integer minor units and shown
as decimal text made from those ints. Statements resting on simulated attestation say so.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from databright.crypto import sha256_hex
from databright.errors import SettlementError
from databright.ledger.accounts import AccountKind, account_for, contributor_account, trainer_account
from databright.money import format_amount
from databright.settlement.allocation import Allocation, OwnerLine, SettledJob
from databright.settlement.result import Settlement, check_period

FLOOR_BASIS = "usage_floor"

SIMULATED_NOTE = (
    "assurance: simulated — the receipts behind this statement were signed by simulated attestation; "
    "no hardware protected the data or the metering"
)


@dataclass(frozen=True)
class Statement:
    period: str
    holder: str  # ledger account id, e.g. contributor:alice
    kind: str  # contributor | provider | trainer
    currency: str
    minor_units_per_unit: int
    policy: str
    assurance: str
    inputs_digest: str
    allocation_root: str
    lines: tuple[dict[str, Any], ...]
    total: int  # minor units: received (contributor, provider) or paid (trainer)
    # Under a minimum payout: {"released", "carried_over", "paid_out"} in minor units, where paid_out
    # = total + released - carried_over is what reached the holder's account this period.
    carry: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lines"] = list(self.lines)
        data["total_text"] = self.format_amount(self.total)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Statement:
        fields = {k: v for k, v in data.items() if k != "total_text"}
        fields["lines"] = tuple(fields["lines"])
        return cls(**fields)

    def format_amount(self, minor: int) -> str:
        return format_amount(minor, self.currency, self.minor_units_per_unit)


def statement_filename(holder: str) -> str:
    """``contributor:alice`` -> ``contributor-alice``; kinds hold no '-', so the first one separates.

    Ids with characters unsafe in file names get them replaced and a short digest of the full id
    appended, so two holders never share a file.
    """
    kind, _, rest = holder.partition(":")
    if re.fullmatch(r"[A-Za-z0-9._-]+", rest or kind) and "-" not in kind:
        return f"{kind}-{rest}" if rest else kind
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", holder)
    return f"{safe}-{sha256_hex(holder.encode('utf-8'))[:8]}"


# --- building -------------------------------------------------------------------------------------


def _header(settlement: Settlement, holder: str, kind: str) -> dict[str, Any]:
    return {
        "period": settlement.period,
        "holder": holder,
        "kind": kind,
        "currency": settlement.policy.currency,
        "minor_units_per_unit": settlement.policy.minor_units_per_unit,
        "policy": settlement.policy.label,
        "assurance": settlement.assurance,
        "inputs_digest": settlement.inputs_digest,
        "allocation_root": settlement.allocation_root,
    }


@dataclass(frozen=True)
class _Index:
    """A settlement's allocations and jobs grouped by holder, built in one pass over each, so that
    every holder's lines are looked up rather than found by scanning the whole period per holder."""

    data: dict[tuple[str, str], list[Allocation]]  # (job id, holder) -> the data rows, in order
    compute: dict[str, list[Allocation]]  # holder -> compute rows, in allocation order
    job_parts: dict[str, dict[str, int]]  # job id -> role -> amount
    contributor_jobs: dict[str, list[tuple[SettledJob, OwnerLine]]]  # holder -> (job, owner), job order
    trainer_jobs: dict[str, list[SettledJob]]  # trainer account -> jobs, in job order


def _index(settlement: Settlement) -> _Index:
    data: dict[tuple[str, str], list[Allocation]] = {}
    compute: dict[str, list[Allocation]] = {}
    job_parts: dict[str, dict[str, int]] = {}
    for a in settlement.allocations:
        if a.role == "data":
            data.setdefault((a.job_id, a.holder), []).append(a)
        elif a.role == "compute":
            compute.setdefault(a.holder, []).append(a)
        parts = job_parts.setdefault(a.job_id, {role: 0 for role in ("data", "compute", "fee")})
        parts[a.role] += a.amount
    contributor_jobs: dict[str, list[tuple[SettledJob, OwnerLine]]] = {}
    trainer_jobs: dict[str, list[SettledJob]] = {}
    for job in settlement.jobs:
        trainer_jobs.setdefault(trainer_account(job.trainer_id), []).append(job)
        for owner in job.owners:
            contributor_jobs.setdefault(contributor_account(owner.owner), []).append((job, owner))
    return _Index(data, compute, job_parts, contributor_jobs, trainer_jobs)


def _data_part(rows: list[Allocation]) -> dict[str, Any]:
    """One (job, holder)'s data rows as one line's basis, weight and amount.

    A single row is shown as it is. Under a usage floor a holder has a ``usage_floor`` row (weight:
    rows used) and a ``value`` (or ``rows_used``) row: the line pays their sum, names the bases
    ``usage_floor+value``, shows the weight of the value part and the floor's own amount, so the
    statement's total is what the holder was paid.
    """
    if len(rows) == 1:
        return {"weight": rows[0].weight, "basis": rows[0].basis, "amount": rows[0].amount}
    floor = [a for a in rows if a.basis == FLOOR_BASIS]
    rest = [a for a in rows if a.basis != FLOOR_BASIS]
    return {
        "weight": sum(a.weight for a in rest) if rest else sum(a.weight for a in floor),
        "basis": "+".join(a.basis for a in (*floor, *rest)),
        "amount": sum(a.amount for a in rows),
        "usage_floor_amount": sum(a.amount for a in floor),
    }


def _contributor_lines(
    settlement: Settlement, holder: str, index: _Index | None = None
) -> list[dict[str, Any]]:
    fmt = settlement.policy.format_amount
    index = _index(settlement) if index is None else index
    lines = []
    for job, owner in index.contributor_jobs.get(holder, []):
        rows = index.data.get((job.job_id, holder))
        if not rows:
            raise SettlementError(
                f"job {job.job_id}: {holder} is among its owners but has no data allocation; the "
                "settlement's allocations and jobs disagree — propose the period again",
                job_id=job.job_id,
            )
        part = _data_part(rows)
        line = {
            "job_id": job.job_id,
            "dataset": job.dataset,
            "dataset_version": job.dataset_version,
            "rows_used": owner.rows_used,
            "visits": owner.visits,
            "value": owner.value,
            "weight": part["weight"],
            "basis": part["basis"],
            "amount": part["amount"],
            "amount_text": fmt(part["amount"]),
            "records_root": job.records_root,
            "dataset_merkle_root": job.dataset_merkle_root,
            "receipt_digest": job.receipt_digest,
            "assurance": job.assurance,
        }
        if "usage_floor_amount" in part:
            line["usage_floor_amount"] = part["usage_floor_amount"]
            line["usage_floor_amount_text"] = fmt(part["usage_floor_amount"])
        lines.append(line)
    return lines


def _provider_lines(settlement: Settlement, holder: str, index: _Index | None = None) -> list[dict[str, Any]]:
    fmt = settlement.policy.format_amount
    index = _index(settlement) if index is None else index
    jobs = {job.job_id: job for job in settlement.jobs}
    return [
        {
            "job_id": a.job_id,
            "dataset": jobs[a.job_id].dataset,
            "work_units": jobs[a.job_id].work_units,
            "attestation_result_id": jobs[a.job_id].attestation_result_id,
            "receipt_digest": jobs[a.job_id].receipt_digest,
            "amount": a.amount,
            "amount_text": fmt(a.amount),
            "assurance": jobs[a.job_id].assurance,
        }
        for a in index.compute.get(holder, [])
    ]


def _trainer_lines(settlement: Settlement, holder: str, index: _Index | None = None) -> list[dict[str, Any]]:
    fmt = settlement.policy.format_amount
    index = _index(settlement) if index is None else index
    lines = []
    for job in index.trainer_jobs.get(holder, []):
        parts = index.job_parts.get(job.job_id, {role: 0 for role in ("data", "compute", "fee")})
        lines.append(
            {
                "job_id": job.job_id,
                "dataset": job.dataset,
                "dataset_version": job.dataset_version,
                "provider_id": job.provider_id,
                "payment": job.payment,
                "payment_text": fmt(job.payment),
                **{f"{role}_amount": amount for role, amount in parts.items()},
                "receipt_digest": job.receipt_digest,
                "assurance": job.assurance,
            }
        )
    return lines


def build_statements(settlement: Settlement) -> list[Statement]:
    """One statement per contributor, provider and trainer that took part in the period.

    Linear in the period's size: allocations and jobs are grouped by holder once (``_index``).
    """
    holders: dict[str, str] = {}
    for job in settlement.jobs:
        holders[trainer_account(job.trainer_id)] = "trainer"
    # A holder paid only from earlier periods' carry-over (no job this period) gets a statement too.
    for holder in (*(a.holder for a in settlement.allocations), *settlement.carry):
        if holder in holders:
            continue
        account_kind = account_for(holder).kind
        if account_kind in (AccountKind.CONTRIBUTOR, AccountKind.PROVIDER):
            holders[holder] = account_kind.value
    builders = {"contributor": _contributor_lines, "provider": _provider_lines, "trainer": _trainer_lines}
    index = _index(settlement)
    statements = []
    for holder in sorted(holders):
        kind = holders[holder]
        lines = builders[kind](settlement, holder, index)
        key = "payment" if kind == "trainer" else "amount"
        total = sum(line[key] for line in lines)
        carried = settlement.carry.get(holder)
        statements.append(
            Statement(
                **_header(settlement, holder, kind),
                lines=tuple(lines),
                total=total,
                carry=None
                if carried is None
                else {
                    "released": carried.released,
                    "carried_over": carried.carried_over,
                    "paid_out": total + carried.released - carried.carried_over,
                },
            )
        )
    return statements


# --- rendering and files --------------------------------------------------------------------------


def render_statement(statement: Statement) -> str:
    """The statement as text for people; every number in it comes from the JSON form."""
    fmt = statement.format_amount
    out = [
        f"DataBright statement — {statement.holder} — period {statement.period}",
        f"currency: {statement.currency} (1 {statement.currency} = {statement.minor_units_per_unit} minor "
        f"units); policy: {statement.policy}",
        f"assurance: {statement.assurance}",
    ]
    if statement.assurance == "simulated":
        out.append(SIMULATED_NOTE)
    out += [
        f"settlement inputs digest: {statement.inputs_digest}",
        f"allocation root:          {statement.allocation_root}",
        "",
    ]
    for line in statement.lines:
        if statement.kind == "contributor":
            out += [
                f"job {line['job_id']} — dataset {line['dataset']} v{line['dataset_version']}",
                f"  rows used {line['rows_used']}, visits {line['visits']}, value {line['value']!r}, "
                f"weight {line['weight']} (basis: {line['basis']})",
                f"  amount {line['amount_text']} ({line['amount']} minor units)"
                + (
                    f", of which usage floor {line['usage_floor_amount_text']}"
                    if "usage_floor_amount" in line
                    else ""
                ),
                f"  records root {line['records_root']}",
                f"  dataset Merkle root {line['dataset_merkle_root']}",
                f"  receipt digest {line['receipt_digest']} (assurance: {line['assurance']})",
            ]
        elif statement.kind == "provider":
            out += [
                f"job {line['job_id']} — dataset {line['dataset']}, {line['work_units']} attested work units",
                f"  amount {line['amount_text']} ({line['amount']} minor units)",
                f"  attestation result {line['attestation_result_id']} (assurance: {line['assurance']})",
            ]
        else:
            out += [
                f"job {line['job_id']} — dataset {line['dataset']} v{line['dataset_version']}, "
                f"provider {line['provider_id']}",
                f"  paid {line['payment_text']} = data {fmt(line['data_amount'])} + compute "
                f"{fmt(line['compute_amount'])} + fee {fmt(line['fee_amount'])}",
            ]
    verb = "paid" if statement.kind == "trainer" else "earned" if statement.carry else "received"
    out += [
        "",
        f"total {verb}: {fmt(statement.total)} ({statement.total} minor units) over "
        f"{len(statement.lines)} job(s)",
    ]
    if statement.carry:
        carry = statement.carry
        out += [
            f"released from earlier periods: {fmt(carry['released'])} ({carry['released']} minor units)",
            f"carried to a later period (below the minimum payout): {fmt(carry['carried_over'])} "
            f"({carry['carried_over']} minor units)",
            f"paid out to your account this period: {fmt(carry['paid_out'])} "
            f"({carry['paid_out']} minor units)",
        ]
    return "\n".join(out) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_statements(settlement: Settlement, statements_dir: Path) -> list[Path]:
    """Write every holder's statement as JSON and text; return the paths written."""
    folder = statements_dir / check_period(settlement.period)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for statement in build_statements(settlement):
        name = statement_filename(statement.holder)
        json_path, text_path = folder / f"{name}.json", folder / f"{name}.txt"
        _write_atomic(json_path, json.dumps(statement.to_dict(), indent=2, sort_keys=True) + "\n")
        _write_atomic(text_path, render_statement(statement))
        paths += [json_path, text_path]
    return paths


def load_statement(statements_dir: Path, period: str, holder: str) -> Statement:
    """Read back the JSON statement of one holder (an account id such as ``contributor:alice``)."""
    path = statements_dir / check_period(period) / f"{statement_filename(holder)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettlementError(
            f"no statement for {holder!r} in period {period} at {path}; settle the period first, "
            "or check the holder id (e.g. 'contributor:alice')"
        ) from exc
    except json.JSONDecodeError as exc:
        raise SettlementError(
            f"statement {path} is not valid JSON ({exc}); write the statements again"
        ) from exc
    return Statement.from_dict(data)


def find_statement(statements_dir: Path, period: str, holder: str) -> Statement:
    """Like ``load_statement``, but ``holder`` may also be a bare id (``alice``) when only one kind
    of holder by that name has a statement in the period."""
    if ":" in holder:
        return load_statement(statements_dir, period, holder)
    kinds = (AccountKind.CONTRIBUTOR, AccountKind.PROVIDER, AccountKind.TRAINER)
    folder = statements_dir / check_period(period)
    found = [
        f"{k.value}:{holder}"
        for k in kinds
        if (folder / f"{statement_filename(f'{k.value}:{holder}')}.json").is_file()
    ]
    if len(found) > 1:
        raise SettlementError(
            f"{holder!r} has statements as {', '.join(found)} in period {period}; name the one you mean"
        )
    if not found:
        raise SettlementError(
            f"no statement for {holder!r} in period {period} under {folder}; settle the period first, or "
            "check the holder id (e.g. 'alice' or 'contributor:alice')"
        )
    return load_statement(statements_dir, period, found[0])
