"""Contract tools: write a contract from a sample, say what one demands, dry-run a file against one.

The library behind ``databright contract init|show|check``:

* ``init_contract(contracts_dir, kind, sample)`` infers ``data_contracts/<kind>/schema.json`` and
  ``suite.json`` from a sample file read with ``formats.read_table``. Types come from the values,
  with the contract engine's own strict parsing: a column is ``int`` if every value parses as one,
  else ``float`` if every value parses as a number (NaN/±Inf included: they will be quarantined),
  else ``string``; a column with no value at all is a nullable ``string``. A column is nullable
  only if the sample has a null in it. The suite gets a not-null expectation per non-nullable
  column; a value set for each low-cardinality int or string column (at most ``max_set_size``
  distinct values, each seen twice on average — the label needs only the first); and, for numeric
  columns without a set, a range around the sample's finite values widened by ``margin`` times
  their spread on each side (int bounds rounded outward to integers, float bounds to six
  significant digits). The label defaults to the last column, the features to every numeric
  column but the label. An existing kind is never overwritten — a contract is immutable once a
  dataset uses it — and the folder appears whole or not at all.
* ``describe_contract(contract)`` — columns, roles and each expectation in words, as a dict.
* ``check_file(contract, path)`` — streams the file through a ``Validator`` chunk by chunk and
  returns the merged ``ContractReport``, registering nothing: a contributor's dry run. Schema drift
  and unreadable files raise as they would at ingest.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from databright.crypto import digest_file
from databright.datasets.contracts import (
    KIND_PATTERN,
    NOT_NULL_EXPECTATION,
    Column,
    Contract,
    ContractReport,
    Dtype,
    Schema,
    check_columns,
    expectation_columns,
    load_contract,
)
from databright.datasets.formats import CsvDialect, ReadLimits, open_table, read_table
from databright.datasets.validation import Validator, type_column
from databright.errors import ConfigError, SchemaMismatch

BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
_CANDIDATES: tuple[Dtype, ...] = ("int", "float", "string")
_INT64 = (-(2**63), 2**63 - 1)


# --- inferring a contract from a sample -------------------------------------------------------


def _infer_column(name: str, series: pd.Series, kind: str) -> tuple[Column, pd.Series]:
    """The column as the sample shows it, and its values typed to that dtype.

    Tries int, then float, then string, with the contract engine's own parsing, so the sample
    passes the contract inferred from it (NaN/±Inf aside, which a float column quarantines).
    """
    for dtype in _CANDIDATES:
        try:
            typed, failures, _ = type_column(series, Column(name, dtype, True), kind)
        except SchemaMismatch:  # a typed (Parquet) column that cannot hold this dtype
            continue
        if failures and not (dtype == "float" and set(failures.values()) == {"finite"}):
            continue
        failed = np.zeros(len(typed), dtype=bool)
        failed[list(failures)] = True
        nulls = typed.isna().to_numpy(dtype=bool) & ~failed
        if dtype != "string" and len(typed) and nulls.all():
            return Column(name, "string", True), pd.Series([pd.NA] * len(typed), dtype="string")
        return Column(name, dtype, bool(nulls.any())), typed
    raise ConfigError(
        f"sample column {name!r} has type {series.dtype}, which no contract dtype holds (int, float, "
        "string); cast the column in the sample and run init again",
        column=name,
    )


def _outward(value: float, down: bool) -> float:
    """``value`` rounded away from the data to six significant digits (exact for zero)."""
    if value == 0:
        return 0.0
    exact = Decimal(repr(value))
    step = Decimal(1).scaleb(exact.adjusted() - 5)
    return float(exact.quantize(step, rounding=ROUND_FLOOR if down else ROUND_CEILING))


def _range(col: Column, values: pd.Series, margin: float) -> dict[str, Any] | None:
    present = values.dropna().tolist()  # typing already made NaN/±Inf null
    if not present:
        return None
    lo, hi = min(present), max(present)
    pad = margin * (hi - lo) if hi > lo else margin * max(abs(lo), 1)
    if col.dtype == "int":
        step = math.ceil(pad)  # integer arithmetic: exact at any size
        return {
            "column": col.name,
            "min_value": max(lo - step, _INT64[0]),
            "max_value": min(hi + step, _INT64[1]),
        }
    return {"column": col.name, "min_value": _outward(lo - pad, True), "max_value": _outward(hi + pad, False)}


def _value_set(col: Column, values: pd.Series, max_set_size: int, is_label: bool) -> list[Any] | None:
    if col.dtype == "float":
        return None
    present = values.dropna()
    distinct = sorted({int(v) if col.dtype == "int" else str(v) for v in present.tolist()})
    if not distinct or len(distinct) > max_set_size:
        return None
    if not is_label and len(distinct) * 2 > len(present):
        return None  # mostly unique values: an identifier or free text, not a category
    return distinct


def _expectation(exp_type: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"type": exp_type, "kwargs": kwargs, "meta": {}, "severity": "critical"}


def infer_contract(
    kind: str,
    frame: pd.DataFrame,
    *,
    label: str | None = None,
    features: list[str] | None = None,
    margin: float = 0.1,
    max_set_size: int = 20,
    description: str = "",
) -> Contract:
    """The contract ``init_contract`` would write for ``frame``, without writing anything."""
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin <= 10:
        raise ConfigError(f"margin must be a number from 0 to 10 (a share of the spread), got {margin!r}")
    if isinstance(max_set_size, bool) or not isinstance(max_set_size, int) or not 1 <= max_set_size <= 1000:
        raise ConfigError(f"max_set_size must be an integer from 1 to 1000, got {max_set_size!r}")
    if len(frame) == 0:
        raise ConfigError(
            f"the sample for contract {kind} has no data rows; types, nulls and ranges are read from "
            "the values — give a sample with rows"
        )
    names = [str(c) for c in frame.columns]
    if label is None:
        label = names[-1] if names else ""
    if label not in names:
        raise ConfigError(
            f"label {label!r} is not a column of the sample {names}; pass --label with one of them"
        )
    typed: dict[str, pd.Series] = {}
    columns: list[Column] = []
    for name in names:
        column, values = _infer_column(name, frame[name], kind)
        columns.append(column)
        typed[name] = values
    if features is None:
        features = [c.name for c in columns if c.dtype != "string" and c.name != label]
    schema = Schema(tuple(columns), tuple(features), label)
    expectations = []
    for col in columns:
        if not col.nullable:
            expectations.append(_expectation(NOT_NULL_EXPECTATION, {"column": col.name}))
        value_set = _value_set(col, typed[col.name], max_set_size, col.name == label)
        if value_set is not None:
            expectations.append(_expectation(IN_SET, {"column": col.name, "value_set": value_set}))
        elif col.dtype != "string" and (bounds := _range(col, typed[col.name], margin)) is not None:
            expectations.append(_expectation(BETWEEN, bounds))
    meta = {"description": description or f"Inferred from a sample of {len(frame):,} rows."}
    return Contract.build(
        kind, schema, {"name": kind, "expectations": expectations, "meta": meta, "notes": None}
    )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def init_contract(
    contracts_dir: Path,
    kind: str,
    sample: Path,
    *,
    label: str | None = None,
    features: list[str] | None = None,
    margin: float = 0.1,
    max_set_size: int = 20,
) -> Contract:
    """Infer a contract from ``sample`` and write ``<contracts_dir>/<kind>/{schema,suite}.json``."""
    contracts_dir, sample = Path(contracts_dir), Path(sample)
    if not isinstance(kind, str) or not KIND_PATTERN.match(kind):
        raise ConfigError(
            f"contract kind {kind!r} is not allowed: use lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 64 characters (e.g. 'sales-v1')",
            kind=kind,
        )
    target = contracts_dir / kind
    if target.exists():
        raise ConfigError(
            f"contract {kind} already exists at {target}; a contract never changes once written "
            f"(datasets pin its digest) — choose a new kind such as {kind}-2, or remove the folder if "
            "no dataset uses it",
            kind=kind,
        )
    contract = infer_contract(
        kind,
        read_table(sample),
        label=label,
        features=features,
        margin=margin,
        max_set_size=max_set_size,
        description=f"Inferred by `databright contract init` from {sample.name} "
        f"(sha256 {digest_file(sample)}).",
    )
    contracts_dir.mkdir(parents=True, exist_ok=True)
    staging = contracts_dir / f".{kind}.init-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        _write_json(staging / "schema.json", contract.schema.to_dict())
        _write_json(staging / "suite.json", contract.suite_json)
        try:
            os.rename(staging, target)  # atomic; fails if the kind appeared meanwhile
        except OSError as exc:
            raise ConfigError(
                f"contract {kind} could not be created at {target} ({exc}); if it exists now, "
                "choose a new kind",
                kind=kind,
            ) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return load_contract(contracts_dir, kind)


# --- describing a contract --------------------------------------------------------------------


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 50.0 reads as 50
    return str(value)


def _listing(values: Any) -> str:
    return ", ".join(repr(v) for v in values) if isinstance(values, list) else repr(values)


def describe_expectation(exp_type: str, kwargs: dict[str, Any]) -> str:
    """One expectation as a sentence (unknown types are spelt out from their name and kwargs)."""
    columns = expectation_columns(kwargs)
    who = " and ".join(f"`{c}`" for c in columns) or "the table"
    if exp_type == NOT_NULL_EXPECTATION:
        return f"{who} is never empty (null)"
    if exp_type == BETWEEN:
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        parts = []
        if lo is not None:
            parts.append(f"{'greater than' if kwargs.get('strict_min') else 'at least'} {_number(lo)}")
        if hi is not None:
            parts.append(f"{'less than' if kwargs.get('strict_max') else 'at most'} {_number(hi)}")
        return f"{who} is {' and '.join(parts)}"
    if exp_type == IN_SET:
        return f"{who} is one of {_listing(kwargs.get('value_set'))}"
    if exp_type == "expect_column_values_to_not_be_in_set":
        return f"{who} is none of {_listing(kwargs.get('value_set'))}"
    if exp_type == "expect_column_values_to_match_regex":
        return f"{who} matches the regular expression `{kwargs.get('regex')}`"
    if exp_type == "expect_column_values_to_not_match_regex":
        return f"{who} does not match the regular expression `{kwargs.get('regex')}`"
    if exp_type == "expect_column_value_lengths_to_be_between":
        return f"{who} has from {kwargs.get('min_value')} to {kwargs.get('max_value')} characters"
    words = exp_type.removeprefix("expect_").replace("_", " ")
    rest = {k: v for k, v in kwargs.items() if k not in ("column", "column_A", "column_B", "column_list")}
    return f"{who}: {words}" + (f" ({', '.join(f'{k}={v!r}' for k, v in rest.items())})" if rest else "")


_DTYPE_WORDS = {
    "int": "a whole number (64-bit)",
    "float": "a finite decimal number",
    "string": "text",
}


def describe_contract(contract: Contract) -> dict[str, Any]:
    """The contract for people: its columns with roles and rules, and every expectation in words."""
    schema = contract.schema
    expectations = []
    rules: dict[str, list[str]] = {c.name: [] for c in schema.columns}
    for exp in contract.suite_json["expectations"]:
        kwargs = dict(exp.get("kwargs", {}))
        sentence = describe_expectation(exp["type"], kwargs)
        columns = expectation_columns(kwargs)
        expectations.append(
            {"type": exp["type"], "columns": columns, "kwargs": kwargs, "description": sentence}
        )
        for name in columns:
            rules[name].append(sentence)
    columns_out = []
    for col in schema.columns:
        role = "label" if col.name == schema.label else ("feature" if col.name in schema.features else None)
        words = [f"`{col.name}` is {_DTYPE_WORDS[col.dtype]}" + (" or empty (null)" if col.nullable else "")]
        columns_out.append({**col.to_dict(), "role": role, "rules": words + rules[col.name]})
    meta = contract.suite_json.get("meta")
    return {
        "kind": contract.kind,
        "digest": contract.digest,
        "schema_digest": schema.digest,
        "description": meta.get("description") if isinstance(meta, dict) else None,
        "header": ",".join(schema.names),
        "columns": columns_out,
        "features": list(schema.features),
        "label": schema.label,
        "expectations": expectations,
    }


# --- checking a file --------------------------------------------------------------------------


def check_file(
    contract: Contract,
    path: Path,
    *,
    limits: ReadLimits | None = None,
    dialect: CsvDialect | None = None,
) -> ContractReport:
    """Validate ``path`` against ``contract`` chunk by chunk and register nothing (a dry run)."""
    validator = Validator(contract)
    reports = []
    with open_table(Path(path), limits=limits or ReadLimits(), dialect=dialect or CsvDialect()) as source:
        check_columns(source.columns, contract.schema, contract.kind)  # drift: refused before any row
        for chunk in source.chunks():
            reports.append(validator.validate(chunk.frame, chunk.first_row_number).report)
    return ContractReport.merge(reports)
