"""The contract engine: a file's frame in, typed good rows and a ``ContractReport`` out.

Bad input is refused whole or quarantined row by row — never half-registered, never lost:

1. **Schema drift is refused whole.** A missing, extra or reordered column, or a Parquet column
   whose Arrow type cannot hold the declared dtype, raises ``SchemaMismatch``.
2. **Typing.** Text columns (as ``read_table`` returns for CSV) are parsed strictly: an int is
   ``[+-]?[0-9]+`` within 64 bits, a float is an ASCII decimal number without ``_`` or surrounding
   spaces, and an empty field is null. A value that does not parse is quarantined as
   ``type:<dtype>``; NaN or ±Inf in a float column as ``finite``. Typed columns (Arrow from
   Parquet, or numpy/pandas dtypes) keep their values; a NaN in a numpy float column is pandas'
   missing marker and counts as null, while Arrow keeps NaN and null apart.
3. **The expectation suite** (Great Expectations, ephemeral context, whole-frame batch, COMPLETE
   results) runs on the typed frame with the cells that failed typing set to null; each failed
   expectation's ``unexpected_index_list`` names the rows to quarantine. A cell already
   quarantined for its type is not reported again by the suite.

A row that fails several checks appears once per failure in the report and is removed once from
``good``. ``good`` keeps the file's row order and adds ``row_number`` (1-based data row).
Great Expectations is imported inside ``run_suite`` only: it costs seconds to import.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from databright.crypto import digest_json
from databright.datasets.contracts import Column, Contract, Schema
from databright.errors import ConfigError, DatasetError, SchemaMismatch

if TYPE_CHECKING:
    from collections.abc import Sequence

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
PANDAS_DTYPES: dict[str, Any] = {
    "int": pd.Int64Dtype(),
    "float": pd.Float64Dtype(),
    "string": pd.StringDtype(),
}
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}


# --- result types -----------------------------------------------------------------------------


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
    """What passed the contract and what was quarantined, and why, per row and column."""

    contract_kind: str
    contract_digest: str
    rows_received: int
    rows_passed: int
    quarantined: tuple[QuarantinedRow, ...]

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
            "rows_received": self.rows_received,
            "rows_passed": self.rows_passed,
            "quarantined": [q.to_dict() for q in self.quarantined],
        }

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


@dataclass(frozen=True, eq=False)
class ValidatedFrame:
    good: pd.DataFrame
    report: ContractReport


# --- schema drift -----------------------------------------------------------------------------


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


# --- typing -----------------------------------------------------------------------------------


def _display(value: Any) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _is_text(series: pd.Series) -> bool:
    if isinstance(series.dtype, pd.StringDtype):
        return True
    if series.dtype == object:
        return all(isinstance(v, str) or _is_missing(v) for v in series.tolist())
    return False


_INT_TEXT = r"^[+-]?[0-9]+$"
_FLOAT_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NON_FINITE_TEXT = r"^[+-]?(nan|inf|infinity)$"
_SAFE_INT_DIGITS = 18  # any 18-digit integer fits in int64; longer ones are checked in Python


def _text_array(series: pd.Series) -> pa.Array:
    arr = pa.Array.from_pandas(series.astype(object))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    return pc.cast(arr, pa.string())


def _null_where(arr: pa.Array, positions: Iterable[int]) -> pa.Array:
    mask = np.zeros(len(arr), dtype=bool)
    mask[list(positions)] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, arr.type), arr)


def _parse_text(arr: pa.Array, col: Column) -> tuple[pa.Array, dict[int, str]]:
    """Strictly parse a text column: an empty field is null, anything else must be a clean literal.

    Arrow's string-to-number casts round exactly like Python's ``int``/``float`` (checked by the
    tests); the regular expressions keep out what they would accept but a contract should not.
    """
    target = _ARROW_TYPES[col.dtype]
    empty = pc.fill_null(pc.equal(arr, ""), True)
    if col.dtype == "string":
        return pc.if_else(empty, pa.scalar(None, target), arr), {}
    present = pc.invert(empty)
    failures: dict[int, str] = {}
    if col.dtype == "int":
        ok = pc.fill_null(pc.match_substring_regex(arr, _INT_TEXT), False)
        failures = dict.fromkeys(_positions(pc.and_(present, pc.invert(ok))), "type:int")
        body = pc.replace_substring_regex(arr, r"^\+", "")
        for pos in _positions(pc.and_(ok, pc.greater(pc.utf8_length(body), _SAFE_INT_DIGITS))):
            if not INT64_MIN <= int(str(arr[pos].as_py())) <= INT64_MAX:
                failures[pos] = "type:int"
        candidates = _null_where(pc.if_else(ok, body, pa.scalar(None, pa.string())), failures)
        return pc.cast(candidates, target), failures
    ok = pc.fill_null(pc.match_substring_regex(arr, _FLOAT_TEXT), False)
    special = pc.fill_null(pc.match_substring_regex(arr, _NON_FINITE_TEXT, ignore_case=True), False)
    failures = dict.fromkeys(_positions(pc.and_(present, pc.invert(pc.or_(ok, special)))), "type:float")
    failures.update(dict.fromkeys(_positions(special), "finite"))
    values = pc.cast(pc.if_else(ok, arr, pa.scalar(None, pa.string())), target)
    overflow = _positions(pc.is_inf(values))  # e.g. 1e999 parses, but to infinity
    failures.update(dict.fromkeys(overflow, "finite"))
    return (_null_where(values, overflow) if overflow else values), failures


def _positions(mask: pa.Array | pa.ChunkedArray) -> list[int]:
    return [int(i) for i in np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))]


def _retyped(col: Column, arrow_type: pa.DataType, kind: str) -> SchemaMismatch:
    hint = {"int": "an integer type (int64)", "float": "a floating type (double)", "string": "string (utf8)"}
    return SchemaMismatch(
        f"column {col.name!r} has type {arrow_type} but contract {kind} declares {col.dtype}; "
        f"write the column as {hint[col.dtype]} and submit the file again",
        column=col.name,
        got=str(arrow_type),
        expected=col.dtype,
    )


def _type_arrow(arr: pa.Array, col: Column, kind: str) -> tuple[pa.Array, dict[int, str]]:
    """Cast one typed column to the contract's Arrow type; failing cells become null."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    target = _ARROW_TYPES[col.dtype]
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), target), {}
    failures: dict[int, str] = {}
    if col.dtype == "int":
        if not pa.types.is_integer(arr.type):
            raise _retyped(col, arr.type, kind)
        if arr.type == pa.uint64():
            too_big = pc.greater(arr, pa.scalar(INT64_MAX, pa.uint64()))
            failures = dict.fromkeys(_positions(too_big), "type:int")
            arr = pc.if_else(pc.fill_null(too_big, False), pa.scalar(None, pa.uint64()), arr)
        return pc.cast(arr, target), failures
    if col.dtype == "float":
        if pa.types.is_integer(arr.type):
            # int64/uint64 values above 2**53 do not survive the trip to float64: refuse those cells.
            if arr.type in (pa.int64(), pa.uint64()):
                pylist = arr.to_pylist()
                failures = {i: "type:float" for i, v in enumerate(pylist) if v is not None and float(v) != v}
                if failures:
                    arr = pa.array([None if i in failures else v for i, v in enumerate(pylist)], arr.type)
            return pc.cast(arr, target, safe=False), failures
        if not pa.types.is_floating(arr.type):
            raise _retyped(col, arr.type, kind)
        arr = pc.cast(arr, target)
        bad = pc.or_(pc.is_nan(arr), pc.is_inf(arr))
        failures = dict.fromkeys(_positions(bad), "finite")
        if failures:
            arr = pc.if_else(pc.fill_null(bad, False), pa.scalar(None, target), arr)
        return arr, failures
    if not (
        pa.types.is_string(arr.type)
        or pa.types.is_large_string(arr.type)
        or pa.types.is_string_view(arr.type)
    ):
        raise _retyped(col, arr.type, kind)
    return pc.cast(arr, target), failures


def _to_arrow(series: pd.Series, col: Column, kind: str) -> pa.Array:
    try:
        arr = pa.Array.from_pandas(series)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaMismatch(
            f"column {col.name!r} holds values Arrow cannot type ({exc}); contract {kind} declares "
            f"{col.dtype} — pass strings as read from the file or a column of one type",
            column=col.name,
        ) from exc
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr


def type_column(series: pd.Series, col: Column, kind: str) -> tuple[pd.Series, dict[int, str], pa.Array]:
    """Typed nullable column, {position: failed expectation}, and the raw values for the report."""
    if _is_text(series):
        raw = _text_array(series)
        arr, failures = _parse_text(raw, col)
    else:
        raw = _to_arrow(series, col, kind)
        arr, failures = _type_arrow(raw, col, kind)
    mapper = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.string(): pd.StringDtype()}
    typed = pd.Series(arr.to_pandas(types_mapper=mapper.get)).astype(PANDAS_DTYPES[col.dtype])
    return typed, failures, raw


# --- the expectation suite --------------------------------------------------------------------


def _raised(exception_info: Any) -> str | None:
    """GX reports exceptions either flat or keyed by metric id; return the first message."""
    if not isinstance(exception_info, dict):
        return None
    if exception_info.get("raised_exception"):
        return str(exception_info.get("exception_message"))
    for value in exception_info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _result_columns(kwargs: dict[str, Any]) -> list[str]:
    if isinstance(kwargs.get("column"), str):
        return [kwargs["column"]]
    if isinstance(kwargs.get("column_A"), str) and isinstance(kwargs.get("column_B"), str):
        return [kwargs["column_A"], kwargs["column_B"]]
    if isinstance(kwargs.get("column_list"), list):
        return [str(c) for c in kwargs["column_list"]]
    return []


def run_suite(typed: pd.DataFrame, contract: Contract) -> list[tuple[int, list[str], str]]:
    """Run the contract's GX suite on ``typed`` (RangeIndex); return (position, columns, expectation)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    try:
        # GX raises many unrelated exception types for a malformed suite; all mean "fix suite.json".
        suite = gx.ExpectationSuite(**copy.deepcopy(contract.suite_json))
    except Exception as exc:
        raise ConfigError(
            f"contract {contract.kind}: suite.json is not a Great Expectations suite: {exc}; fix the file"
        ) from exc
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    batch = (
        context.data_sources.add_pandas(name="submission")
        .add_dataframe_asset(name="rows")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": typed})
    )
    results = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failures: list[tuple[int, list[str], str]] = []
    for result in results.results:
        config_ = result.expectation_config
        exp_type = str(config_.type) if config_ is not None else "unknown_expectation"
        kwargs = dict(config_.kwargs) if config_ is not None else {}
        message = _raised(result.exception_info)
        if message is not None:
            raise ConfigError(
                f"contract {contract.kind}: expectation {exp_type} {kwargs} could not run: {message}; "
                "fix suite.json"
            )
        if result.success:
            continue
        indices = (result.result or {}).get("unexpected_index_list")
        if not indices:
            raise DatasetError(
                f"the file fails {exp_type} {kwargs} of contract {contract.kind} as a whole "
                f"(observed {(result.result or {}).get('observed_value')!r}); it cannot be quarantined row "
                "by row — fix the file and submit it again",
                expectation=exp_type,
            )
        columns = _result_columns(kwargs)
        failures.extend((int(i), columns, exp_type) for i in indices)
    return failures


# --- the engine -------------------------------------------------------------------------------


def suite_frame(typed: pd.DataFrame) -> pd.DataFrame:
    """The typed frame in the dtypes GX evaluates fastest, with the same values and nulls.

    GX vectorises range checks only for numpy dtypes and falls back to a Python ``map`` for
    pandas' nullable ones, so floats go to numpy (null → NaN, which GX counts as null; real NaN
    was already quarantined) and ints too when they hold no null.
    """
    out = {}
    for name in typed.columns:
        column = typed[name]
        if isinstance(column.dtype, pd.Float64Dtype):
            out[name] = pd.Series(column.to_numpy(dtype=np.float64, na_value=np.nan))
        elif isinstance(column.dtype, pd.Int64Dtype) and not column.hasnans:
            out[name] = pd.Series(column.to_numpy(dtype=np.int64))
        else:
            out[name] = column
    return pd.DataFrame(out, columns=list(typed.columns))


def _quarantine_entries(
    failures: Iterable[tuple[int, list[str], str]],
    raw: dict[str, pa.Array],
    typed_failures: set[tuple[int, str]],
) -> list[QuarantinedRow]:
    entries = []
    for position, columns, expectation in failures:
        if any((position, c) in typed_failures for c in columns):
            continue
        shown = [_display(raw[c][position].as_py()) for c in columns if c in raw]
        value = shown[0] if len(shown) == 1 else (",".join(str(v) for v in shown) if shown else None)
        entries.append(QuarantinedRow(position + 1, ",".join(columns), expectation, value))
    return entries


def validate(frame: pd.DataFrame, contract: Contract) -> ValidatedFrame:
    """Check ``frame`` against ``contract``: refuse schema drift, quarantine bad rows, type the rest."""
    schema = contract.schema
    check_columns(list(frame.columns), schema, contract.kind)
    frame = frame.reset_index(drop=True)
    n = len(frame)
    typed_columns: dict[str, pd.Series] = {}
    raw: dict[str, pa.Array] = {}
    typed_failures: set[tuple[int, str]] = set()
    entries: list[QuarantinedRow] = []
    for col in schema.columns:
        typed, failures, values = type_column(frame[col.name], col, contract.kind)
        typed_columns[col.name] = typed.reset_index(drop=True)
        raw[col.name] = values
        for position, expectation in failures.items():
            typed_failures.add((position, col.name))
            entries.append(
                QuarantinedRow(position + 1, col.name, expectation, _display(values[position].as_py()))
            )
    typed_frame = pd.DataFrame(typed_columns, columns=list(schema.names))
    suite_failures = run_suite(suite_frame(typed_frame), contract)
    entries.extend(_quarantine_entries(suite_failures, raw, typed_failures))
    order = {name: i for i, name in enumerate(schema.names)}
    entries.sort(key=lambda q: (q.row_number, order.get(q.column.split(",")[0], len(order)), q.expectation))
    bad_positions = np.array(sorted({q.row_number - 1 for q in entries}), dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    keep[bad_positions] = False
    good = typed_frame[keep].copy()
    good.insert(len(schema.columns), "row_number", np.flatnonzero(keep).astype(np.int64) + 1)
    good = good.reset_index(drop=True)
    report = ContractReport(
        contract_kind=contract.kind,
        contract_digest=contract.digest,
        rows_received=n,
        rows_passed=int(keep.sum()),
        quarantined=tuple(entries),
    )
    return ValidatedFrame(good=good, report=report)
