"""The contract engine: drift refused whole, bad rows quarantined with their reasons, the rest typed.

Also the chunked ``Validator``: row numbers offset per chunk, chunk reports merging into the whole
file's report, the native screen agreeing with Great Expectations, and clean chunks skipping GX.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.crypto import digest_json
from databright.datasets import Column, Contract, ContractReport, QuarantinedRow, read_table, validate
from databright.datasets.contracts import load_contract
from databright.datasets.formats import TEXT_DTYPE
from databright.datasets.validation import Validator, type_column
from databright.errors import ConfigError, DatasetError, SchemaMismatch

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
MATCH = "expect_column_values_to_match_regex"
NOT_MATCH = "expect_column_values_to_not_match_regex"
CONTRACTS = Path(__file__).resolve().parents[2] / "data_contracts"
TEXT_CONTRACT = load_contract(CONTRACTS, "tabular-text-v1")
TABULAR = load_contract(CONTRACTS, "tabular-v1")


def _line(**overrides: str) -> str:
    values = {f"f{i}": f"{i}.25" for i in range(8)} | {"label": "1"}
    values.update(overrides)
    return ",".join(values[k] for k in [*(f"f{i}" for i in range(8)), "label"])


def test_bad_rows_are_quarantined_with_reasons(tabular: Contract, write_csv: Callable[..., Path]) -> None:
    lines = [
        _line(),  # 1 clean
        _line(f0=""),  # 2 null
        _line(f3="51.5"),  # 3 out of range
        _line(label="2"),  # 4 not in set
        _line(f1="abc"),  # 5 not a float
        _line(f2="inf"),  # 6 not finite
        _line(label="1.5"),  # 7 not an int
        _line(f4="NaN", f5="-60"),  # 8 two failures, one row
        _line(f6="1_000", label=""),  # 9 python would parse 1_000; the contract does not
        _line(f0="-0.0", f7="-50", label="0"),  # 10 clean, on the boundary
        _line(f7="1e999"),  # 11 parses, to infinity
    ]
    result = validate(read_table(write_csv("mixed.csv", lines)), tabular)
    assert set(result.report.quarantined) == {
        QuarantinedRow(2, "f0", NOT_NULL, ""),
        QuarantinedRow(3, "f3", BETWEEN, "51.5"),
        QuarantinedRow(4, "label", IN_SET, "2"),
        QuarantinedRow(5, "f1", "type:float", "abc"),
        QuarantinedRow(6, "f2", "finite", "inf"),
        QuarantinedRow(7, "label", "type:int", "1.5"),
        QuarantinedRow(8, "f4", "finite", "NaN"),
        QuarantinedRow(8, "f5", BETWEEN, "-60"),
        QuarantinedRow(9, "f6", "type:float", "1_000"),
        QuarantinedRow(9, "label", NOT_NULL, ""),
        QuarantinedRow(11, "f7", "finite", "1e999"),
    }
    report = result.report
    assert (report.rows_received, report.rows_passed, report.quarantined_rows) == (11, 2, 9)
    assert [q.row_number for q in report.quarantined] == sorted(q.row_number for q in report.quarantined)
    good = result.good
    assert good["row_number"].tolist() == [1, 10]
    assert list(good.columns) == [*tabular.schema.names, "row_number"]
    assert isinstance(good["f0"].dtype, pd.Float64Dtype) and isinstance(good["label"].dtype, pd.Int64Dtype)
    assert good["f7"].tolist() == [7.25, -50.0] and good["label"].tolist() == [1, 0]


def test_report_forms_agree(tabular: Contract, write_csv: Callable[..., Path]) -> None:
    report = validate(
        read_table(write_csv("r.csv", [_line(), _line(f0="x"), _line(label="7")])), tabular
    ).report
    assert report.digest == digest_json(report.to_dict())
    assert report.to_dict()["contract_digest"] == tabular.digest
    frame = report.to_dataframe()
    assert list(frame.columns) == ["row_number", "column", "expectation", "value"]
    assert frame.to_dict("records") == [q.to_dict() for q in report.quarantined]
    assert report.failures_by_expectation() == {IN_SET: 1, "type:float": 1}
    assert "1/3 rows passed" in repr(report)
    assert ContractReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    with pytest.raises(DatasetError, match="exactly the keys"):
        ContractReport.from_dict({"rows_received": 3})


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("f0,f1,f2,f3,f4,f5,f6,f7", r"missing \['label'\]"),
        ("f0,f1,f2,f3,f4,f5,f6,f7,label,f8", r"extra \['f8'\]"),
        ("f1,f0,f2,f3,f4,f5,f6,f7,label", r"reordered: got \['f1', 'f0'"),
        ("F0,f1,f2,f3,f4,f5,f6,f7,label", r"missing \['f0'\]; extra \['F0'\]"),
    ],
)
def test_schema_drift_is_refused_whole(
    tabular: Contract, write_csv: Callable[..., Path], header: str, fragment: str
) -> None:
    width = len(header.split(","))
    path = write_csv("drift.csv", [",".join(["1"] * width)], header=header)
    with pytest.raises(SchemaMismatch, match=fragment) as info:
        validate(read_table(path), tabular)
    assert "f0,f1,f2,f3,f4,f5,f6,f7,label in that order" in str(info.value)
    assert str(info.value).startswith("SCHEMA_MISMATCH: columns do not match contract tabular-v1")
    assert info.value.code == "SCHEMA_MISMATCH"


def _parquet(tmp_path: Path, columns: dict[str, pa.Array]) -> pd.DataFrame:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(columns), path)
    return read_table(path)


FLOAT64 = pa.float64()


def _features(n: int, dtype: pa.DataType = FLOAT64) -> dict[str, pa.Array]:
    return {f"f{i}": pa.array([float(i)] * n, dtype) for i in range(8)}


def test_parquet_is_typed_and_nan_differs_from_null(tabular: Contract, tmp_path: Path) -> None:
    cols = _features(4, pa.float32())
    cols["f0"] = pa.array([0.1, float("nan"), None, 1.5], pa.float32())
    cols["label"] = pa.array([1, 0, 1, 3], pa.int8())
    result = validate(_parquet(tmp_path, cols), tabular)
    assert set(result.report.quarantined) == {
        QuarantinedRow(2, "f0", "finite", "nan"),
        QuarantinedRow(3, "f0", NOT_NULL, None),
        QuarantinedRow(4, "label", IN_SET, "3"),
    }
    # float32 widens exactly: the stored value is the float32 nearest 0.1, not 0.1
    assert result.good["f0"].tolist() == [float(np.float32(0.1))]


@pytest.mark.parametrize(
    ("column", "array", "fragment"),
    [
        (
            "f0",
            pa.array(["1.0", "2.0"]),
            "column 'f0' has type string but contract tabular-v1 declares float",
        ),
        ("label", pa.array([1.0, 0.0]), "column 'label' has type double .* declares int"),
        ("label", pa.array([True, False]), "column 'label' has type bool"),
        ("f3", pa.array([pa.scalar(1, pa.timestamp("s"))] * 2), "column 'f3' has type timestamp"),
    ],
)
def test_parquet_retyped_columns_are_refused(
    tabular: Contract, tmp_path: Path, column: str, array: pa.Array, fragment: str
) -> None:
    cols = _features(2) | {"label": pa.array([0, 1])}
    cols[column] = array
    with pytest.raises(SchemaMismatch, match=fragment) as info:
        validate(_parquet(tmp_path, cols), tabular)
    assert str(info.value).startswith(f"SCHEMA_MISMATCH: column {column!r} has type")
    assert info.value.code == "SCHEMA_MISMATCH" and info.value.context["column"] == column


def test_integers_that_do_not_fit_are_quarantined(tabular: Contract, tmp_path: Path) -> None:
    cols = _features(3) | {"label": pa.array([0, 2**64 - 1, 1], pa.uint64())}
    cols["f1"] = pa.array([1, 2**53 + 1, 3], pa.int64())  # an int column feeding a float one
    report = validate(_parquet(tmp_path, cols), tabular).report
    assert set(report.quarantined) == {
        QuarantinedRow(2, "label", "type:int", str(2**64 - 1)),
        QuarantinedRow(2, "f1", "type:float", str(2**53 + 1)),
    }


def test_header_only_file_passes_nothing(tabular: Contract, write_csv: Callable[..., Path]) -> None:
    result = validate(read_table(write_csv("empty.csv", [])), tabular)
    assert (result.report.rows_received, result.report.rows_passed, len(result.good)) == (0, 0, 0)


@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=40),
    style=st.sampled_from(["repr", "e", "f"]),
)
@settings(max_examples=60, deadline=None)
def test_text_floats_parse_exactly_like_python(values: list[float], style: str) -> None:
    text = [repr(v) if style == "repr" else (f"{v:.17e}" if style == "e" else f"{v:.6f}") for v in values]
    typed, failures, _ = type_column(pd.Series(text, dtype=str), Column("x", "float"), "t")
    assert failures == {}
    assert typed.tolist() == [float(t) for t in text]


def test_text_ints_are_strict() -> None:
    text = [
        "+5",
        "007",
        "-0",
        str(2**63 - 1),
        str(-(2**63)),
        str(2**63),
        "1_000",
        " 1",
        "１",
        "1.0",
        "1e3",
        "",
    ]
    typed, failures, _ = type_column(pd.Series(text, dtype=str), Column("n", "int", True), "t")
    assert typed.tolist()[:5] == [5, 7, 0, 2**63 - 1, -(2**63)]
    assert failures == dict.fromkeys(range(5, 11), "type:int")
    assert typed.isna().tolist() == [False] * 5 + [True] * 7


def _with_suite(tabular: Contract, extra: dict) -> Contract:
    suite = json.loads(json.dumps(tabular.suite_json))
    suite["expectations"].append(extra)
    return Contract.build("custom-v1", tabular.schema, suite)


@pytest.mark.parametrize(
    "expectation",
    [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 0, "max_value": 1}},
        {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {"column": "f0", "min_value": 0, "max_value": 1},
        },
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "f0"}},
    ],
)
def test_whole_table_and_cross_row_expectations_are_refused(tabular: Contract, expectation: dict) -> None:
    # Chunked validation would judge them per chunk: a different verdict from the whole file's.
    contract = _with_suite(tabular, expectation)
    with pytest.raises(ConfigError, match=rf"#18 {expectation['type']} judges the table as a whole"):
        Validator(contract)


def test_an_unknown_expectation_type_is_a_contract_error(tabular: Contract) -> None:
    contract = _with_suite(tabular, {"type": "expect_rows_to_be_nice", "kwargs": {"column": "f0"}})
    with pytest.raises(ConfigError, match="'expect_rows_to_be_nice' is not a Great Expectations"):
        Validator(contract)


def test_an_expectation_that_cannot_run_is_a_contract_error(
    tabular: Contract, write_csv: Callable[..., Path]
) -> None:
    contract = _with_suite(
        tabular,
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "f0", "min_value": 5, "max_value": 1},
        },
    )
    with pytest.raises(ConfigError, match="custom-v1: expectation expect_column_values_to_be_between"):
        validate(read_table(write_csv("one.csv", [_line()])), contract)


# --- text rules: sets and regular expressions (tabular-text-v1) -------------------------------

TEXT_COLUMNS = ["x0", "x1", "country", "sku", "comment", "label"]


def _text_row(**overrides: str | None) -> list[str | None]:
    values: dict[str, str | None] = {
        "x0": "1.5",
        "x1": "-2",
        "country": "CH",
        "sku": "ABC-0042",
        "comment": "fine",
        "label": "0",
    }
    values.update(overrides)
    return [values[c] for c in TEXT_COLUMNS]


def _text_frame(rows: list[list[str | None]], dtype: object = object) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([r[i] for r in rows], dtype=dtype) for i, c in enumerate(TEXT_COLUMNS)})


TEXT_ROWS = [
    _text_row(),  # 1 clean
    _text_row(country="ch"),  # 2 a set is case-sensitive
    _text_row(sku="ABC-42"),  # 3 regex
    _text_row(sku="xABC-0042"),  # 4 anchored regex
    _text_row(comment="bell\x07"),  # 5 a control character
    _text_row(comment=None, x1="-1000"),  # 6 clean: comment may be null, bound inclusive
    _text_row(sku=None),  # 7 null in a non-nullable text column
    _text_row(x0="-Infinity"),  # 8 not finite
    _text_row(x1="1000.5", label="2"),  # 9 out of range and not in the set
    _text_row(label="0x1"),  # 10 not an int
]
TEXT_FAILURES = {
    QuarantinedRow(2, "country", IN_SET, "ch"),
    QuarantinedRow(3, "sku", MATCH, "ABC-42"),
    QuarantinedRow(4, "sku", MATCH, "xABC-0042"),
    QuarantinedRow(5, "comment", NOT_MATCH, "bell\x07"),
    QuarantinedRow(7, "sku", NOT_NULL, None),
    QuarantinedRow(8, "x0", "finite", "-Infinity"),
    QuarantinedRow(9, "x1", BETWEEN, "1000.5"),
    QuarantinedRow(9, "label", IN_SET, "2"),
    QuarantinedRow(10, "label", "type:int", "0x1"),
}


@pytest.mark.parametrize("dtype", [object, TEXT_DTYPE], ids=["jsonl-objects", "arrow-text"])
def test_sets_and_regular_expressions_quarantine_text_rows(dtype: object) -> None:
    result = Validator(TEXT_CONTRACT).validate(_text_frame(TEXT_ROWS, dtype))
    assert set(result.report.quarantined) == TEXT_FAILURES
    assert result.good["row_number"].tolist() == [1, 6]
    assert result.good["comment"].isna().tolist() == [False, True]
    assert result.good["x1"].tolist() == [-2.0, -1000.0]


def test_typed_parquet_columns_meet_the_same_text_rules(tmp_path: Path) -> None:
    table = pa.table(
        {
            "x0": pa.array([1.5, 2.0, float("inf")]),
            "x1": pa.array([0.0, 0.0, 0.0], pa.float32()),
            "country": pa.array(["DE", "XX", "FR"]),
            "sku": pa.array(["ABC-0001", "ABC-0002", "abc-0003"], pa.large_string()),
            "comment": pa.array([None, "ok", "tab\there"]),
            "label": pa.array([1, 0, 1], pa.int16()),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    report = validate(read_table(tmp_path / "t.parquet"), TEXT_CONTRACT).report
    assert set(report.quarantined) == {
        QuarantinedRow(2, "country", IN_SET, "XX"),
        QuarantinedRow(3, "x0", "finite", "inf"),
        QuarantinedRow(3, "sku", MATCH, "abc-0003"),
        QuarantinedRow(3, "comment", NOT_MATCH, "tab\there"),
    }


# --- chunks: row numbers, merging, the screen ------------------------------------------------


def test_chunks_number_their_rows_from_first_row_number() -> None:
    validator = Validator(TEXT_CONTRACT)
    result = validator.validate(_text_frame(TEXT_ROWS[:3]), first_row_number=1_000_001)
    assert result.report.first_row_number == 1_000_001
    assert [q.row_number for q in result.report.quarantined] == [1_000_002, 1_000_003]
    assert result.good["row_number"].tolist() == [1_000_001]
    for bad in (0, -3, True, 1.0):
        with pytest.raises(DatasetError, match="first_row_number must be"):
            validator.validate(_text_frame(TEXT_ROWS[:1]), first_row_number=bad)  # type: ignore[arg-type]


def _dirty_tabular_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """tabular-v1 text rows with every kind of bad cell sprinkled in, reproducibly."""
    x = rng.normal(0.0, 20.0, size=(n, 8)).round(3)  # some beyond ±50
    cells = [[f"{v:.3f}" for v in row] + [str(int(rng.integers(0, 2)))] for row in x]
    bad = ["", "abc", "nan", "-inf", "1e999", "1_0", " 1"]
    for row in rng.choice(n, size=n // 5, replace=False):
        cells[row][int(rng.integers(0, 9))] = str(rng.choice([*bad, "2", "1.5"]))
    return pd.DataFrame(
        {c: pd.Series([r[i] for r in cells], dtype=TEXT_DTYPE) for i, c in enumerate(TABULAR.schema.names)}
    )


@pytest.fixture(scope="module")
def tabular_validators() -> tuple[Validator, Validator]:
    """Screened and unscreened validators, built once: setting GX up once is what a Validator is for."""
    return Validator(TABULAR), Validator(TABULAR, screen=False)


@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 59), max_size=4, unique=True))
@settings(max_examples=10, deadline=None)
def test_chunk_reports_merge_into_the_whole_files_report(
    tabular_validators: tuple[Validator, Validator], seed: int, cuts: list[int]
) -> None:
    validator = tabular_validators[0]
    frame = _dirty_tabular_rows(np.random.default_rng(seed), 60)
    whole = validator.validate(frame)
    bounds = [0, *sorted(cuts), len(frame)]
    parts = [
        validator.validate(frame.iloc[a:b], first_row_number=a + 1) for a, b in itertools.pairwise(bounds)
    ]
    merged = ContractReport.merge([p.report for p in parts])
    assert merged == whole.report and merged.digest == whole.report.digest
    good = pd.concat([p.good for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(good, whole.good)
    # Accounting: every row either passed or is quarantined, once.
    assert merged.rows_passed + merged.quarantined_rows == merged.rows_received == len(frame)


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=6, deadline=None)
def test_the_screen_agrees_with_great_expectations(
    tabular_validators: tuple[Validator, Validator], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    frame = _dirty_tabular_rows(rng, 40)
    screened, unscreened = tabular_validators
    assert screened.validate(frame).report == unscreened.validate(frame).report
    text = _text_frame([TEXT_ROWS[int(i)] for i in rng.integers(0, len(TEXT_ROWS), size=12)])
    text_screened, text_unscreened = Validator(TEXT_CONTRACT), Validator(TEXT_CONTRACT, screen=False)
    assert text_screened.validate(text).report == text_unscreened.validate(text).report


BOUNDS_SUITE = {
    "name": "bounds-v1",
    "expectations": [
        {"type": NOT_NULL, "kwargs": {"column": "n"}},
        {"type": BETWEEN, "kwargs": {"column": "n", "min_value": 0, "max_value": 10, "strict_max": True}},
        {"type": BETWEEN, "kwargs": {"column": "x", "min_value": -1.5, "strict_min": True}},
        {"type": BETWEEN, "kwargs": {"column": "x", "max_value": 2**53}},
        {"type": "expect_column_values_to_not_be_in_set", "kwargs": {"column": "n", "value_set": [3, 7]}},
        {"type": NOT_MATCH, "kwargs": {"column": "s", "regex": "^ |  | $"}},
        {"type": "expect_column_value_lengths_to_be_between", "kwargs": {"column": "s", "max_value": 3}},
    ],
}


@given(
    n=st.lists(st.one_of(st.none(), st.integers(-3, 12)), min_size=1, max_size=15),
    x=st.lists(
        st.sampled_from([-2.0, -1.5, -1.4999, 0.0, 2.0**53, 2.0**53 + 2, None]), min_size=15, max_size=15
    ),
    s=st.lists(st.sampled_from(["ab", " ab", "a  b", "ab ", "abcd", "", None]), min_size=15, max_size=15),
)
@settings(max_examples=20, deadline=None)
def test_the_screen_agrees_on_strict_and_open_bounds_sets_and_regexes(
    mixed_schema_contract: tuple[Validator, Validator], n: list[int | None], x: list, s: list
) -> None:
    frame = pd.DataFrame(
        {"n": pd.array(n, dtype="Int64"), "x": pd.array(x[: len(n)], dtype="Float64"), "s": s[: len(n)]}
    )
    screened, unscreened = mixed_schema_contract
    assert screened.validate(frame).report == unscreened.validate(frame).report


@pytest.fixture(scope="module")
def mixed_schema_contract() -> tuple[Validator, Validator]:
    from databright.datasets import Schema

    schema = Schema(
        (Column("n", "int"), Column("x", "float", True), Column("s", "string", True)), ("n", "x"), "s"
    )
    contract = Contract.build("bounds-v1", schema, BOUNDS_SUITE)
    return Validator(contract), Validator(contract, screen=False)


def test_clean_chunks_never_reach_great_expectations() -> None:
    validator = Validator(TEXT_CONTRACT)
    clean = _text_frame([TEXT_ROWS[0], TEXT_ROWS[5]] * 50)
    assert validator.validate(clean).report.rows_passed == 100
    assert validator.gx_runs == 0
    validator.validate(_text_frame([TEXT_ROWS[0], TEXT_ROWS[2]]))  # a regex failure: GX decides
    assert validator.gx_runs == 1
    unscreened = Validator(TEXT_CONTRACT, screen=False)
    unscreened.validate(clean)
    assert unscreened.gx_runs == 1


def test_merge_refuses_reports_that_are_not_one_files_chunks() -> None:
    validator = Validator(TEXT_CONTRACT)
    first = validator.validate(_text_frame(TEXT_ROWS[:4])).report
    second = validator.validate(_text_frame(TEXT_ROWS[4:]), first_row_number=5).report
    assert ContractReport.merge([first, second]).rows_received == len(TEXT_ROWS)
    with pytest.raises(
        DatasetError, match=r"report #1 starts at row 1 but the reports before it end at row 10"
    ):
        ContractReport.merge([second, first])
    with pytest.raises(
        DatasetError, match=r"report #1 starts at row 1 but the reports before it end at row 4"
    ):
        ContractReport.merge([first, first])
    other = validate(_dirty_tabular_rows(np.random.default_rng(1), 3), TABULAR).report
    with pytest.raises(DatasetError, match="made with contract tabular-v1"):
        ContractReport.merge([first, other])
    with pytest.raises(DatasetError, match="at least one report"):
        ContractReport.merge([])


# --- the float fast path: Arrow's cast accepts exactly the contract's literals ----------------

_FLOAT_LITERAL = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_NON_FINITE = re.compile(r"^[+-]?(nan|inf|infinity)$", re.IGNORECASE)


@given(st.text(alphabet="0123456789+-.eE_ ,xXnaifNAIFtyTYd\t\u00a0\u0661\uff11", max_size=10))
@settings(max_examples=400, deadline=None)
def test_a_float_cell_is_judged_alone(text: str) -> None:
    # A column that casts whole skips the regular expression; one bad neighbour forces it. Either
    # way the cell gets the same verdict, and only literals the contract allows get through.
    alone, alone_failures, _ = type_column(pd.Series([text], dtype=str), Column("x", "float", True), "t")
    mixed, mixed_failures, _ = type_column(
        pd.Series([text, "bad"], dtype=str), Column("x", "float", True), "t"
    )
    assert alone_failures.get(0) == mixed_failures.get(0)
    assert alone.isna()[0] == mixed.isna()[0] and (alone.isna()[0] or alone[0] == mixed[0])
    if text == "":
        assert alone_failures == {} and alone.isna()[0]
    elif _FLOAT_LITERAL.match(text):
        value = float(text)
        assert alone_failures.get(0) == (None if math.isfinite(value) else "finite")
        assert alone.isna()[0] or alone[0] == value
    else:
        assert alone_failures == {0: "finite" if _NON_FINITE.match(text) else "type:float"}
