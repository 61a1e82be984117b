"""The contract engine: chunks of a file in, typed good rows and a ``ContractReport`` out.

``Validator(contract)`` sets up Great Expectations (ephemeral context, data source, batch
definition, suite) once; ``validate(frame, first_row_number)`` then checks chunk after chunk, and
``ContractReport.merge`` joins the chunks' reports into the file's, with the digest one whole-frame
``validate`` gives. Bad input is refused whole or quarantined row by row — never lost:

1. **Schema drift is refused whole** (``contracts.check_columns``, ``_retyped``): ``SchemaMismatch``
   (``SCHEMA_MISMATCH: ...``) names the missing, extra, reordered or retyped columns.
2. **Typing.** Text columns (CSV, JSON Lines: strings; ``""``, ``None``, ``pd.NA`` are null) are
   parsed strictly: an int is ``[+-]?[0-9]+`` within 64 bits, a float an ASCII decimal without
   ``_`` or spaces; otherwise ``type:<dtype>``, and NaN/±Inf in a float column ``finite``. Typed
   columns (Parquet as ``pandas.ArrowDtype``, numpy, pandas) keep their values; Arrow keeps NaN
   (quarantined) and null apart, a numpy NaN is pandas' null.
3. **The suite** runs on the typed chunk with cells that failed typing set to null; each failed
   expectation's ``unexpected_index_list`` names the rows to quarantine (a cell quarantined for
   its type is not reported again). Only row-level expectations are allowed, and ``mostly`` is
   refused by the loader, so a row's fate never depends on how the file was chunked; table-level,
   aggregate and cross-row ones (row count, mean, unique, z-scores) are refused at ``Validator()``.
4. **The screen.** GX's cost per call is mostly fixed (≈ 5 ms per expectation to build its metric
   graph, whatever the chunk size) and most chunks are clean. So the validator first evaluates the
   common expectations (not null, between, (not) in set, (not) match regex) with the same pandas
   expressions GX's pandas engine applies to the same frame; only those that find an unexpected
   value there, and all others, go to GX, whose result decides. A clean chunk never reaches GX;
   ``Validator(contract, screen=False)`` always runs the whole suite (tests: identical reports).

Measured on 100k-row text chunks of tabular-v1 (9 columns, 18 expectations), one core of the
development machine, medians: typing ≈ 29 ms, the screen ≈ 3 ms, the whole suite through GX
≈ 110 ms of which ≈ 90 ms is fixed per call. A clean chunk takes ≈ 55 ms with the screen (1.8 M
rows/s; per-call overhead ≈ 5 ms, on 10 rows) and ≈ 150 ms without it (0.65 M rows/s; ≈ 95 ms on
10 rows); a chunk with 100 bad cells spread over every column ≈ 125 ms. tabular-text-v1 (two
regexes, two sets): ≈ 40 ms clean. ``Validator()`` ≈ 10 ms once GX is imported (that: ≈ 4.5 s).

A row failing several checks appears once per failure in the report and leaves ``good`` once;
``good`` keeps the chunk's order and adds ``row_number`` (the file's 1-based data row). GX is
imported when a ``Validator`` is built, never at package import.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from databright.datasets.contracts import (
    Column,
    Contract,
    ContractReport,
    QuarantinedRow,
    Screen,
    check_columns,
    expectation_columns,
    screen_for,
)
from databright.errors import ConfigError, DatasetError, SchemaMismatch

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
PANDAS_DTYPES: dict[str, Any] = {
    "int": pd.Int64Dtype(),
    "float": pd.Float64Dtype(),
    "string": pd.StringDtype(),
}
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
_TO_PANDAS = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.string(): pd.StringDtype()}


@dataclass(frozen=True, eq=False)
class ValidatedFrame:
    good: pd.DataFrame
    report: ContractReport


def _retyped(col: Column, arrow_type: pa.DataType, kind: str) -> SchemaMismatch:
    hint = {"int": "an integer type (int64)", "float": "a floating type (double)", "string": "string (utf8)"}
    return SchemaMismatch(
        f"column {col.name!r} has type {arrow_type} but contract {kind} declares {col.dtype}; "
        f"write the column as {hint[col.dtype]} and submit the file again",
        column=col.name,
        got=str(arrow_type),
        expected=col.dtype,
    )


# --- typing -----------------------------------------------------------------------------------


def _display(value: Any) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _is_text(series: pd.Series) -> bool:
    if isinstance(series.dtype, pd.StringDtype):
        return True
    # infer_dtype skips None, NaN and pd.NA, and runs in C: no Python loop over the rows.
    return series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")


_INT_TEXT = r"^[+-]?[0-9]+$"
_FLOAT_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NON_FINITE_TEXT = r"^[+-]?(nan|inf|infinity)$"
_SAFE_INT_DIGITS = 18  # any 18-digit integer fits in int64; longer ones are checked in Python


def _text_array(series: pd.Series) -> pa.Array:
    if isinstance(series.dtype, pd.StringDtype) and series.dtype.storage == "pyarrow":
        arr = pa.array(series.array)  # the Arrow buffer itself, no copy through Python objects
    else:
        arr = pa.array(series.astype(object), from_pandas=True, type=pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pc.cast(arr, pa.string())


def _positions(mask: pa.Array | pa.ChunkedArray) -> list[int]:
    return [int(i) for i in np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))]


def _null_where(arr: pa.Array, positions: Iterable[int]) -> pa.Array:
    mask = np.zeros(len(arr), dtype=bool)
    mask[list(positions)] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, arr.type), arr)


def _parse_floats(text: pa.Array) -> tuple[pa.Array, dict[int, str]]:
    """``text`` (null where empty) as float64; unparseable → ``type:float``, NaN/±Inf → ``finite``.

    Arrow's cast accepts exactly the ``_FLOAT_TEXT`` literals plus the NaN/Inf spellings (a
    property test holds it to that), so a column that casts whole needs no regular expression:
    only the rare column holding a bad value pays for the per-value pass.
    """
    failures: dict[int, str] = {}
    try:
        values = pc.cast(text, pa.float64())
    except pa.ArrowInvalid:
        ok = pc.fill_null(pc.match_substring_regex(text, _FLOAT_TEXT), True)
        not_ok = _positions(pc.invert(ok))
        for pos in not_ok:
            special = re.match(_NON_FINITE_TEXT, str(text[pos].as_py()), re.IGNORECASE)
            failures[pos] = "finite" if special else "type:float"
        values = pc.cast(_null_where(text, not_ok) if not_ok else text, pa.float64())
    bad = pc.or_(pc.is_nan(values), pc.is_inf(values))  # NaN/Inf as written, or 1e999 → inf
    non_finite = _positions(bad)
    failures.update(dict.fromkeys(non_finite, "finite"))
    return (_null_where(values, non_finite) if non_finite else values), failures


def _parse_text(arr: pa.Array, col: Column) -> tuple[pa.Array, dict[int, str]]:
    """Strictly parse a text column: an empty field is null, anything else must be a clean literal.

    Arrow's string-to-number casts round exactly like Python's ``int``/``float`` (checked by the
    tests); the regular expressions keep out what they would accept but a contract should not.
    """
    target = _ARROW_TYPES[col.dtype]
    empty = pc.fill_null(pc.equal(arr, ""), True)
    text = pc.if_else(empty, pa.scalar(None, pa.string()), arr)
    if col.dtype == "string":
        return text, {}
    if col.dtype == "float":
        return _parse_floats(text)
    ok = pc.fill_null(pc.match_substring_regex(text, _INT_TEXT), False)
    failures = dict.fromkeys(_positions(pc.and_(pc.invert(empty), pc.invert(ok))), "type:int")
    body = pc.replace_substring_regex(text, r"^\+", "")
    for pos in _positions(pc.and_(ok, pc.greater(pc.utf8_length(body), _SAFE_INT_DIGITS))):
        if not INT64_MIN <= int(str(text[pos].as_py())) <= INT64_MAX:
            failures[pos] = "type:int"
    candidates = _null_where(pc.if_else(ok, body, pa.scalar(None, pa.string())), failures)
    return pc.cast(candidates, target), failures


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
    typed = pd.Series(arr.to_pandas(types_mapper=_TO_PANDAS.get)).astype(PANDAS_DTYPES[col.dtype])
    return typed, failures, raw


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


# --- the validator ----------------------------------------------------------------------------

# Map expectations whose verdict on a row depends on other rows: chunking would change them.
CROSS_ROW_EXPECTATIONS = frozenset(
    {
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_increasing",
        "expect_column_values_to_be_decreasing",
        "expect_column_value_z_scores_to_be_less_than",
        "expect_compound_columns_to_be_unique",
    }
)
_RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
_MAX_CACHED_SUITES = 256


@dataclass(frozen=True)
class _Check:
    index: int
    type: str
    kwargs: dict[str, Any]
    screen: Screen | None  # None: only GX may judge it


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


class Validator:
    """Validates chunk after chunk against one contract; GX is set up once, here.

    ``gx_runs`` counts the chunks that needed Great Expectations. Not thread-safe: use one
    validator per thread.
    """

    def __init__(self, contract: Contract, *, screen: bool = True) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.contract = contract
        self.screen = screen
        self.gx_runs = 0
        self._gx = gx
        self._expectations: list[dict[str, Any]] = copy.deepcopy(contract.suite_json["expectations"])
        try:
            # GX raises many unrelated exception types for a malformed suite; all mean "fix suite.json".
            whole_suite = gx.ExpectationSuite(**copy.deepcopy(contract.suite_json))
        except Exception as exc:
            raise ConfigError(
                f"contract {contract.kind}: suite.json is not a Great Expectations suite: {exc}; fix the file"
            ) from exc
        self._checks = [self._check(i, exp) for i, exp in enumerate(self._expectations)]
        # Suites of the expectations a chunk sends to GX, by their indices; the whole one is built now.
        self._suites: dict[tuple[int, ...], Any] = {tuple(range(len(self._expectations))): whole_suite}
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(project_config=config, mode="ephemeral")
        self._batches = (
            context.data_sources.add_pandas(name="submission")
            .add_dataframe_asset(name="rows")
            .add_batch_definition_whole_dataframe("chunk")
        )

    def _check(self, index: int, exp: dict[str, Any]) -> _Check:
        from great_expectations.exceptions import ExpectationNotFoundError
        from great_expectations.expectations.expectation import (
            ColumnMapExpectation,
            ColumnPairMapExpectation,
            MulticolumnMapExpectation,
        )
        from great_expectations.expectations.registry import get_expectation_impl

        exp_type, kwargs = exp["type"], dict(exp.get("kwargs", {}))
        kind = self.contract.kind
        try:
            impl = get_expectation_impl(exp_type)
        except ExpectationNotFoundError as exc:
            raise ConfigError(
                f"contract {kind}: expectation #{index} {exp_type!r} is not a Great Expectations "
                "expectation type; fix its 'type' in suite.json"
            ) from exc
        row_level = (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)
        if not issubclass(impl, row_level) or exp_type in CROSS_ROW_EXPECTATIONS:
            raise ConfigError(
                f"contract {kind}: expectation #{index} {exp_type} judges the table as a whole or compares "
                "rows with each other, but DataBright validates a file chunk by chunk and quarantines row "
                "by row; keep only row-level expectations (not null, between, in set, regex, …) in "
                "suite.json — duplicates are refused at ingest anyway"
            )
        return _Check(index, exp_type, kwargs, screen_for(exp_type, kwargs))

    def _needs_gx(self, check: _Check, frame: pd.DataFrame) -> bool:
        if not self.screen or check.screen is None:
            return True
        return check.screen(frame[check.kwargs["column"]], check.kwargs)

    def _suite(self, indices: tuple[int, ...]) -> Any:
        suite = self._suites.get(indices)
        if suite is None:
            if len(self._suites) >= _MAX_CACHED_SUITES:
                self._suites.clear()
            expectations = [copy.deepcopy(self._expectations[i]) for i in indices]
            suite = self._gx.ExpectationSuite(
                name=self.contract.suite_json["name"], expectations=expectations
            )
            self._suites[indices] = suite
        return suite

    def run_suite(self, frame: pd.DataFrame) -> list[tuple[int, tuple[str, ...], str]]:
        """Run the expectations on ``frame`` (a ``suite_frame``); return (position, columns, expectation)."""
        selected = tuple(c.index for c in self._checks if self._needs_gx(c, frame))
        if not selected:
            return []
        self.gx_runs += 1
        batch = self._batches.get_batch(batch_parameters={"dataframe": frame})
        results = batch.validate(self._suite(selected), result_format=_RESULT_FORMAT)
        kind = self.contract.kind
        failures: list[tuple[int, tuple[str, ...], str]] = []
        for result in results.results:
            config = result.expectation_config
            exp_type = str(config.type) if config is not None else "unknown_expectation"
            kwargs = dict(config.kwargs) if config is not None else {}
            kwargs.pop("batch_id", None)
            message = _raised(result.exception_info)
            if message is not None:
                raise ConfigError(
                    f"contract {kind}: expectation {exp_type} {kwargs} could not run: {message}; "
                    "fix suite.json"
                )
            if result.success:
                continue
            indices = (result.result or {}).get("unexpected_index_list")
            if not indices:
                raise DatasetError(
                    f"the file fails {exp_type} {kwargs} of contract {kind} as a whole (observed "
                    f"{(result.result or {}).get('observed_value')!r}); it cannot be quarantined row by "
                    "row — fix the file and submit it again",
                    expectation=exp_type,
                )
            columns = tuple(expectation_columns(kwargs))
            failures.extend((int(i), columns, exp_type) for i in indices)
        return failures

    def validate(self, frame: pd.DataFrame, first_row_number: int = 1) -> ValidatedFrame:
        """Check one chunk whose first row is the file's data row ``first_row_number`` (1-based)."""
        if (
            isinstance(first_row_number, bool)
            or not isinstance(first_row_number, int)
            or first_row_number < 1
        ):
            raise DatasetError(
                f"first_row_number must be the chunk's first data row (an integer >= 1), got "
                f"{first_row_number!r}; pass Chunk.first_row_number"
            )
        contract, schema = self.contract, self.contract.schema
        check_columns(list(frame.columns), schema, contract.kind)
        frame = frame.reset_index(drop=True)
        n = len(frame)
        offset = first_row_number - 1
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
                value = _display(values[position].as_py())
                entries.append(QuarantinedRow(offset + position + 1, col.name, expectation, value))
        typed_frame = pd.DataFrame(typed_columns, columns=list(schema.names))
        for position, columns, expectation in self.run_suite(suite_frame(typed_frame)):
            if any((position, c) in typed_failures for c in columns):
                continue
            shown = [_display(raw[c][position].as_py()) for c in columns if c in raw]
            value = shown[0] if len(shown) == 1 else (",".join(str(v) for v in shown) if shown else None)
            entries.append(QuarantinedRow(offset + position + 1, ",".join(columns), expectation, value))
        order = {name: i for i, name in enumerate(schema.names)}
        entries.sort(
            key=lambda q: (q.row_number, order.get(q.column.split(",")[0], len(order)), q.expectation)
        )
        keep = np.ones(n, dtype=bool)
        keep[np.array(sorted({q.row_number - first_row_number for q in entries}), dtype=np.int64)] = False
        good = typed_frame if not entries else typed_frame[keep]  # a mask makes a copy already
        good.insert(
            len(schema.columns), "row_number", np.flatnonzero(keep).astype(np.int64) + first_row_number
        )
        report = ContractReport(
            contract_kind=contract.kind,
            contract_digest=contract.digest,
            rows_received=n,
            rows_passed=int(keep.sum()),
            quarantined=tuple(entries),
            first_row_number=first_row_number,
        )
        return ValidatedFrame(good=good.reset_index(drop=True), report=report)

    def __repr__(self) -> str:
        return f"Validator({self.contract.kind}, screen={self.screen}, gx_runs={self.gx_runs})"


def validate(frame: pd.DataFrame, contract: Contract) -> ValidatedFrame:
    """Check a whole file's frame against ``contract`` (one chunk starting at row 1)."""
    return Validator(contract).validate(frame)
