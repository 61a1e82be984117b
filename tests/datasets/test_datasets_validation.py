"""The contract engine: drift refused whole, bad rows quarantined with their reasons, the rest typed."""

from __future__ import annotations

import json
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
from databright.datasets import Column, Contract, QuarantinedRow, read_table, validate
from databright.datasets.validation import type_column
from databright.errors import ConfigError, DatasetError, SchemaMismatch

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"


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
    with pytest.raises(SchemaMismatch, match=fragment):
        validate(_parquet(tmp_path, cols), tabular)


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


def test_a_table_level_failure_refuses_the_file(tabular: Contract, write_csv: Callable[..., Path]) -> None:
    contract = _with_suite(
        tabular, {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 0, "max_value": 1}}
    )
    with pytest.raises(DatasetError, match=r"as a whole .*observed 2"):
        validate(read_table(write_csv("two.csv", [_line(), _line(f0="1")])), contract)


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
