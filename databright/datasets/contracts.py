"""Data contracts: the schema and the Great Expectations suite a dataset kind must satisfy.

A contract lives in ``data_contracts/<kind>/``: ``schema.json`` (columns in file order — name,
dtype ``int`` | ``float`` | ``string``, nullable — and the feature and label roles) and
``suite.json`` (a Great Expectations 1.x ``ExpectationSuite`` as JSON, run row by row on the typed
data; rows it rejects are quarantined, never silently dropped). Loading is cheap and does not import
GX. The loader checks that the suite names only schema columns, that every non-nullable column has
an ``expect_column_values_to_not_be_null``, and refuses ``mostly`` (every failing row is
quarantined, so a tolerance would make a row's fate depend on its neighbours and on chunking). A
contract's digest covers kind, schema and suite: a changed contract is a new one.

Also here, because they define what a contract *means* rather than how a file is checked:
``check_columns`` (a header must be exactly the schema's columns: ``SchemaMismatch`` otherwise),
``screen_for`` (the common row-level expectations evaluated with the pandas expressions GX's
pandas engine uses — ``validation.Validator`` uses it to keep clean chunks away from GX's fixed
per-call cost), and ``ContractReport``, the verdict: what passed, and each failed check with its
row, column, expectation and value. Reports of consecutive chunks merge
(``ContractReport.merge``) into the whole file's report, digest included.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from databright.crypto import digest_json
from databright.errors import ConfigError, DatasetError, SchemaMismatch, UnknownContract

Dtype = Literal["int", "float", "string"]
DTYPES: tuple[Dtype, ...] = ("int", "float", "string")

# Columns DataBright adds next to the schema columns in its own frames and files.
RESERVED_COLUMNS = frozenset({"row_number", "record_id", "owner"})

KIND_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
NOT_NULL_EXPECTATION = "expect_column_values_to_not_be_null"


@dataclass(frozen=True)
class Column:
    name: str
    dtype: Dtype
    nullable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _COLUMN.match(self.name):
            raise ConfigError(
                f"column name {self.name!r} is not allowed: use a letter or '_' then letters, digits "
                "or '_' (at most 64 characters)"
            )
        if self.name in RESERVED_COLUMNS:
            raise ConfigError(
                f"column name {self.name!r} is reserved by DataBright "
                f"({', '.join(sorted(RESERVED_COLUMNS))}); rename the column in the schema"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"column {self.name!r} has dtype {self.dtype!r}; use one of {', '.join(DTYPES)}"
            )
        if not isinstance(self.nullable, bool):
            raise ConfigError(f"column {self.name!r}: nullable must be true or false, got {self.nullable!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "nullable": self.nullable}


@dataclass(frozen=True)
class Schema:
    """Columns in file order, plus the roles a trainer needs: feature columns and the label."""

    columns: tuple[Column, ...]
    features: tuple[str, ...]
    label: str

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if not names:
            raise ConfigError("a schema needs at least one column")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"schema names column(s) {repeated} more than once; each column appears once")
        unknown = [f for f in self.features if f not in names]
        if unknown:
            raise ConfigError(f"features {unknown} are not schema columns {names}; fix the schema's features")
        if self.label not in names:
            raise ConfigError(f"label {self.label!r} is not a schema column {names}; fix the schema's label")
        if self.label in self.features:
            raise ConfigError(f"label {self.label!r} is also listed as a feature; a column has one role")
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f"features {list(self.features)} repeat a column; list each feature once")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise ConfigError(f"{name!r} is not a column of this schema {list(self.names)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [c.to_dict() for c in self.columns],
            "features": list(self.features),
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Schema:
        if not isinstance(data, dict):
            raise ConfigError(f"a schema is a JSON object, got {type(data).__name__}")
        missing = [k for k in ("columns", "features", "label") if k not in data]
        if missing:
            raise ConfigError(f"schema is missing {missing}; it needs 'columns', 'features' and 'label'")
        extra = sorted(set(data) - {"columns", "features", "label"})
        if extra:
            raise ConfigError(f"schema has unknown keys {extra}; allowed are 'columns', 'features', 'label'")
        raw_columns = data["columns"]
        if not isinstance(raw_columns, list) or not all(isinstance(c, dict) for c in raw_columns):
            raise ConfigError("schema 'columns' must be a list of {name, dtype, nullable} objects")
        columns = []
        for raw in raw_columns:
            unknown = sorted(set(raw) - {"name", "dtype", "nullable"})
            if unknown or "name" not in raw or "dtype" not in raw:
                raise ConfigError(
                    f"schema column {raw!r} must have 'name' and 'dtype' (and optionally 'nullable') only"
                )
            columns.append(Column(raw["name"], raw["dtype"], raw.get("nullable", False)))
        features = data["features"]
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ConfigError(f"schema 'features' must be a list of column names, got {features!r}")
        if not isinstance(data["label"], str):
            raise ConfigError(f"schema 'label' must be a column name, got {data['label']!r}")
        return cls(tuple(columns), tuple(features), data["label"])

    @property
    def digest(self) -> str:
        return digest_json(self.to_dict())


@dataclass(frozen=True)
class Contract:
    """A dataset kind's schema and expectation suite; ``digest`` covers kind, schema and suite."""

    kind: str
    schema: Schema
    suite_json: dict[str, Any]
    digest: str

    @classmethod
    def build(cls, kind: str, schema: Schema, suite_json: dict[str, Any]) -> Contract:
        check_suite(kind, schema, suite_json)
        digest = digest_json({"kind": kind, "schema": schema.to_dict(), "suite": suite_json})
        return cls(kind=kind, schema=schema, suite_json=suite_json, digest=digest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "digest": self.digest,
            "schema": self.schema.to_dict(),
            "suite": self.suite_json,
        }

    def __repr__(self) -> str:
        return f"Contract({self.kind}, {len(self.schema.columns)} columns, digest={self.digest[:12]}…)"


def expectation_columns(kwargs: dict[str, Any]) -> list[str]:
    """The schema columns an expectation's kwargs name, in the order GX reports them."""
    cols: list[str] = []
    for key in ("column", "column_A", "column_B"):
        if isinstance(kwargs.get(key), str):
            cols.append(kwargs[key])
    if isinstance(kwargs.get("column_list"), list):
        cols.extend(str(c) for c in kwargs["column_list"])
    return cols


def check_suite(kind: str, schema: Schema, suite_json: Any) -> None:
    """Refuse a suite that is not shaped like a GX suite or disagrees with the schema."""
    if not isinstance(suite_json, dict) or not isinstance(suite_json.get("expectations"), list):
        raise ConfigError(
            f"contract {kind}: suite.json must be an ExpectationSuite object with an 'expectations' list"
        )
    if not isinstance(suite_json.get("name"), str):
        raise ConfigError(f"contract {kind}: suite.json needs a 'name' string")
    not_null: set[str] = set()
    for i, exp in enumerate(suite_json["expectations"]):
        if not isinstance(exp, dict) or not isinstance(exp.get("type"), str):
            raise ConfigError(f"contract {kind}: expectation #{i} needs a 'type' string, got {exp!r}")
        kwargs = exp.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ConfigError(f"contract {kind}: expectation #{i} ({exp['type']}) has non-object kwargs")
        for col in expectation_columns(kwargs):
            if col not in schema.names:
                raise ConfigError(
                    f"contract {kind}: expectation #{i} ({exp['type']}) names column {col!r}, which is "
                    f"not in the schema {list(schema.names)}; fix suite.json or schema.json"
                )
        if "mostly" in kwargs and not (type(kwargs["mostly"]) in (int, float) and kwargs["mostly"] == 1):
            raise ConfigError(
                f"contract {kind}: expectation #{i} ({exp['type']}) has mostly={kwargs['mostly']!r}; "
                "DataBright quarantines every row that fails a check, so a tolerance cannot apply — "
                "remove 'mostly' (or set it to 1)"
            )
        if exp["type"] == NOT_NULL_EXPECTATION and isinstance(kwargs.get("column"), str):
            not_null.add(kwargs["column"])
    lacking = [c.name for c in schema.columns if not c.nullable and c.name not in not_null]
    if lacking:
        raise ConfigError(
            f"contract {kind}: columns {lacking} are not nullable in schema.json but suite.json has no "
            f"{NOT_NULL_EXPECTATION} for them; add one per column so nulls are quarantined"
        )


def check_columns(columns: Sequence[Any], schema: Schema, kind: str) -> None:
    """Refuse any header that is not exactly the schema's columns in the schema's order."""
    got = [str(c) for c in columns]
    want = list(schema.names)
    if got == want:
        return
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"extra {extra}")
    if not parts:
        parts.append(f"reordered: got {got}")
    raise SchemaMismatch(
        f"columns do not match contract {kind} ({'; '.join(parts)}); the file's header must be exactly "
        f"{','.join(want)} in that order — fix the header or pick the contract that fits",
        missing=missing,
        extra=extra,
        expected=want,
        got=got,
    )


def available_kinds(contracts_dir: Path) -> list[str]:
    if not contracts_dir.is_dir():
        return []
    return sorted(p.name for p in contracts_dir.iterdir() if p.is_dir() and (p / "schema.json").is_file())


def _read_json(path: Path, kind: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"contract {kind}: {path} is missing; every contract has schema.json and suite.json"
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"contract {kind}: {path} is not valid UTF-8 JSON ({exc}); fix the file") from exc


def load_contract(contracts_dir: Path, kind: str) -> Contract:
    """Read ``<contracts_dir>/<kind>/{schema,suite}.json``; ``UnknownContract`` lists the kinds there."""
    kinds = available_kinds(contracts_dir)
    if not isinstance(kind, str) or not KIND_PATTERN.match(kind) or kind not in kinds:
        raise UnknownContract(
            f"no data contract {kind!r} in {contracts_dir}; available kinds: {', '.join(kinds) or '(none)'} "
            "— pick one of them or add data_contracts/<kind>/schema.json and suite.json",
            kind=kind,
            available=kinds,
        )
    folder = contracts_dir / kind
    try:
        schema = Schema.from_dict(_read_json(folder / "schema.json", kind))
    except ConfigError as exc:
        if exc.message.startswith(f"contract {kind}:"):
            raise
        raise ConfigError(f"contract {kind}: {folder / 'schema.json'}: {exc.message}") from exc
    suite_json = cast(dict[str, Any], _read_json(folder / "suite.json", kind))
    return Contract.build(kind, schema, suite_json)


# --- the common row-level expectations, evaluated as GX's pandas engine does --------------------

# A screen answers "might this expectation find an unexpected value in the frame?"; True sends the
# expectation to GX. Each mirrors the ``_pandas`` condition of the GX metric it stands for, applied
# like GX applies it: to the column with its nulls removed.
Screen = Callable[[pd.Series, dict[str, Any]], bool]


def _present(column: pd.Series) -> pd.Series:
    return column[column.notnull()]


def _screen_between(column: pd.Series, kw: dict[str, Any]) -> bool:
    if column.dtype not in (int, float):
        return True  # GX evaluates other dtypes value by value in Python: leave those to GX
    values, lo, hi = _present(column), kw.get("min_value"), kw.get("max_value")
    inside = np.ones(len(values), dtype=bool)
    if lo is not None:
        inside &= (values > lo if kw.get("strict_min") else values >= lo).to_numpy()
    if hi is not None:
        inside &= (values < hi if kw.get("strict_max") else values <= hi).to_numpy()
    return not bool(inside.all())


def _matches(column: pd.Series, kw: dict[str, Any]) -> pd.Series:
    return _present(column).astype(str).str.contains(kw["regex"])


_V = "expect_column_values_to_"
_SET, _REGEX = frozenset({"value_set"}), frozenset({"regex"})
_SCREENS: dict[str, tuple[frozenset[str], Screen]] = {
    _V + "not_be_null": (frozenset(), lambda c, kw: bool(c.isnull().any())),
    _V + "be_between": (frozenset({"min_value", "max_value", "strict_min", "strict_max"}), _screen_between),
    _V + "be_in_set": (_SET, lambda c, kw: not bool(_present(c).isin(kw["value_set"]).all())),
    _V + "not_be_in_set": (_SET, lambda c, kw: bool(_present(c).isin(kw["value_set"]).any())),
    _V + "match_regex": (_REGEX, lambda c, kw: not bool(_matches(c, kw).all())),
    _V + "not_match_regex": (_REGEX, lambda c, kw: bool(_matches(c, kw).any())),
}
_NEUTRAL_KWARGS = frozenset({"column", "mostly", "result_format", "catch_exceptions", "include_config"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def screen_for(exp_type: str, kwargs: dict[str, Any]) -> Screen | None:
    """The screen for this expectation, or None when only GX may judge it (odd kwargs, GX errors)."""
    if exp_type not in _SCREENS or not isinstance(kwargs.get("column"), str):
        return None
    allowed, screen = _SCREENS[exp_type]
    if set(kwargs) - allowed - _NEUTRAL_KWARGS:
        return None
    if "value_set" in allowed:
        values = kwargs.get("value_set")
        if not isinstance(values, list) or not all(isinstance(v, str | int | float) for v in values):
            return None
    if "regex" in allowed and not isinstance(kwargs.get("regex"), str):
        return None
    if "min_value" in allowed:
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        if (lo is None and hi is None) or not all(b is None or _is_number(b) for b in (lo, hi)):
            return None
        if lo is not None and hi is not None and lo > hi:
            return None  # GX refuses it; let GX say so
    return screen


# --- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantinedRow:
    """One failed check: data row ``row_number`` (1-based), its column, the expectation, the value."""

    row_number: int
    column: str
    expectation: str
    value: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "row_number": self.row_number,
            "column": self.column,
            "expectation": self.expectation,
            "value": self.value,
        }


QUARANTINE_COLUMNS = ("row_number", "column", "expectation", "value")


@dataclass(frozen=True)
class ContractReport:
    """What passed the contract and what was quarantined, and why, per row and column.

    The report covers data rows ``first_row_number .. first_row_number + rows_received - 1``; a
    whole file's report starts at row 1. ``quarantined`` is ordered by row, then schema column.
    """

    contract_kind: str
    contract_digest: str
    rows_received: int
    rows_passed: int
    quarantined: tuple[QuarantinedRow, ...]
    first_row_number: int = 1

    @property
    def quarantined_rows(self) -> int:
        """Distinct rows quarantined (a row failing two checks counts once)."""
        return len({q.row_number for q in self.quarantined})

    def failures_by_expectation(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for q in self.quarantined:
            counts[q.expectation] = counts.get(q.expectation, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract_kind": self.contract_kind,
            "contract_digest": self.contract_digest,
            "first_row_number": self.first_row_number,
            "rows_received": self.rows_received,
            "rows_passed": self.rows_passed,
            "quarantined": [q.to_dict() for q in self.quarantined],
        }

    @classmethod
    def from_dict(cls, data: Any) -> ContractReport:
        """Read back an archived report (``contract_report.json``); its digest is unchanged."""
        keys = sorted(f.name for f in fields(cls))
        if not isinstance(data, dict) or sorted(data) != keys:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise DatasetError(
                f"a contract report is an object with exactly the keys {keys}, got {got}; "
                "pass the JSON that ContractReport.to_dict wrote"
            )
        try:
            quarantined = tuple(
                QuarantinedRow(q["row_number"], q["column"], q["expectation"], q["value"])
                for q in data["quarantined"]
            )
        except (KeyError, TypeError) as exc:
            raise DatasetError(
                f"a contract report's 'quarantined' entries need row_number, column, expectation and "
                f"value ({exc!r}); pass the JSON that ContractReport.to_dict wrote"
            ) from exc
        return cls(
            contract_kind=data["contract_kind"],
            contract_digest=data["contract_digest"],
            rows_received=data["rows_received"],
            rows_passed=data["rows_passed"],
            quarantined=quarantined,
            first_row_number=data["first_row_number"],
        )

    @classmethod
    def merge(cls, reports: Sequence[ContractReport]) -> ContractReport:
        """One report for consecutive chunks of one file, given in file order (all at once: linear).

        The result equals, digest included, the report of validating the chunks' rows as one frame
        — every check DataBright allows is decided per row. Reports of different contracts, or
        chunks that overlap, leave a gap or come out of order, are refused.
        """
        if not reports:
            raise DatasetError("ContractReport.merge needs at least one report; pass every chunk's report")
        first = reports[0]
        next_row = first.first_row_number
        for number, report in enumerate(reports):
            if (report.contract_kind, report.contract_digest) != (first.contract_kind, first.contract_digest):
                raise DatasetError(
                    f"report #{number} was made with contract {report.contract_kind} "
                    f"({report.contract_digest[:12]}…), report #0 with {first.contract_kind} "
                    f"({first.contract_digest[:12]}…); merge only the chunks of one validation",
                )
            if report.first_row_number != next_row:
                raise DatasetError(
                    f"report #{number} starts at row {report.first_row_number:,} but the reports before it "
                    f"end at row {next_row - 1:,}; pass every chunk's report once, in file order",
                    expected=next_row,
                    got=report.first_row_number,
                )
            next_row += report.rows_received
        return cls(
            contract_kind=first.contract_kind,
            contract_digest=first.contract_digest,
            rows_received=sum(r.rows_received for r in reports),
            rows_passed=sum(r.rows_passed for r in reports),
            quarantined=tuple(q for r in reports for q in r.quarantined),
            first_row_number=first.first_row_number,
        )

    @property
    def digest(self) -> str:
        return digest_json(self.to_dict())

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "row_number": pd.Series([q.row_number for q in self.quarantined], dtype="int64"),
                "column": pd.Series([q.column for q in self.quarantined], dtype="string"),
                "expectation": pd.Series([q.expectation for q in self.quarantined], dtype="string"),
                "value": pd.Series([q.value for q in self.quarantined], dtype="string"),
            },
            columns=list(QUARANTINE_COLUMNS),
        )

    def __repr__(self) -> str:
        return (
            f"ContractReport({self.contract_kind}: {self.rows_passed}/{self.rows_received} rows passed, "
            f"{self.quarantined_rows} quarantined, {len(self.quarantined)} failures)"
        )
