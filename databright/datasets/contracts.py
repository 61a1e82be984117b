"""Data contracts: the schema and the Great Expectations suite a dataset kind must satisfy.

A contract lives in ``data_contracts/<kind>/``:

* ``schema.json`` — the columns (name, dtype ``int`` | ``float`` | ``string``, nullable) in file
  order, and which columns are the model's features and its label;
* ``suite.json`` — a Great Expectations 1.x ``ExpectationSuite`` as JSON, run row by row on the
  typed data; rows it rejects are quarantined, never silently dropped.

Loading a contract is cheap and does not import Great Expectations: the suite stays JSON here and
becomes a ``gx.ExpectationSuite`` only inside ``validation.validate``. The loader does check that
the suite talks only about schema columns and that every non-nullable column carries an
``expect_column_values_to_not_be_null`` expectation, so schema and suite can never disagree about
nulls. A contract's digest covers its kind, schema and suite, so a changed contract is a new one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from databright.crypto import digest_json
from databright.errors import ConfigError, UnknownContract

Dtype = Literal["int", "float", "string"]
DTYPES: tuple[Dtype, ...] = ("int", "float", "string")

# Columns DataBright adds next to the schema columns in its own frames and files.
RESERVED_COLUMNS = frozenset({"row_number", "record_id", "owner"})

_KIND = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
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

    def __repr__(self) -> str:
        return f"Contract({self.kind}, {len(self.schema.columns)} columns, digest={self.digest[:12]}…)"


def _expectation_columns(kwargs: dict[str, Any]) -> list[str]:
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
        for col in _expectation_columns(kwargs):
            if col not in schema.names:
                raise ConfigError(
                    f"contract {kind}: expectation #{i} ({exp['type']}) names column {col!r}, which is "
                    f"not in the schema {list(schema.names)}; fix suite.json or schema.json"
                )
        if exp["type"] == NOT_NULL_EXPECTATION and isinstance(kwargs.get("column"), str):
            not_null.add(kwargs["column"])
    lacking = [c.name for c in schema.columns if not c.nullable and c.name not in not_null]
    if lacking:
        raise ConfigError(
            f"contract {kind}: columns {lacking} are not nullable in schema.json but suite.json has no "
            f"{NOT_NULL_EXPECTATION} for them; add one per column so nulls are quarantined"
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
    if not isinstance(kind, str) or not _KIND.match(kind) or kind not in kinds:
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
