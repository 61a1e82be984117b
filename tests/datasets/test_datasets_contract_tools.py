"""Contract tools: a contract inferred from a sample, a contract in words, a dry run of a file."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from databright.config import Settings
from databright.datasets import QuarantinedRow, load_contract, read_table, validate
from databright.datasets.contract_tools import check_file, describe_contract, infer_contract, init_contract
from databright.datasets.formats import ReadLimits
from databright.errors import ConfigError, SchemaMismatch, UnreadableFile

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"

SAMPLE = """\
age,height,city,code,note,label
31,1.62,Zurich,A,,yes
45,1.80,Basel,B,tall,no
27,,Geneva,A,x,yes
58,1.75,Bern,B,y,no
39,1.70,Lugano,A,z,no
"""


def _expectations(contract_suite: dict) -> dict[tuple[str, str], dict]:
    return {(e["type"], e["kwargs"]["column"]): e["kwargs"] for e in contract_suite["expectations"]}


def test_init_infers_types_nulls_ranges_and_sets(tmp_path: Path) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text(SAMPLE, encoding="utf-8")
    contract = init_contract(tmp_path / "contracts", "people-v1", sample)
    schema = contract.schema
    assert [(c.name, c.dtype, c.nullable) for c in schema.columns] == [
        ("age", "int", False),
        ("height", "float", True),
        ("city", "string", False),
        ("code", "string", False),
        ("note", "string", True),
        ("label", "string", False),
    ]
    assert schema.label == "label" and schema.features == ("age", "height")  # numeric, not the label
    rules = _expectations(contract.suite_json)
    assert {col for (kind, col) in rules if kind == NOT_NULL} == {"age", "city", "code", "label"}
    # Range = [min − 10% of the spread, max + 10%], rounded outward: ints to integers ...
    assert rules[(BETWEEN, "age")] == {"column": "age", "min_value": 23, "max_value": 62}  # 27−3.1, 58+3.1
    # ... floats to six significant digits (1.62 − 0.018 and 1.80 + 0.018, give or take an ulp).
    low, high = rules[(BETWEEN, "height")]["min_value"], rules[(BETWEEN, "height")]["max_value"]
    assert 1.602 - 1e-5 <= low <= 1.602 and 1.818 <= high <= 1.818 + 1e-5
    assert all(len(Decimal(repr(v)).normalize().as_tuple().digits) <= 6 for v in (low, high))
    assert rules[(IN_SET, "code")]["value_set"] == ["A", "B"]  # 2 values in 5 rows: a category
    assert rules[(IN_SET, "label")]["value_set"] == ["no", "yes"]
    assert (IN_SET, "city") not in rules  # every value distinct: not a category
    assert set(rules) == {
        (NOT_NULL, "age"),
        (BETWEEN, "age"),
        (BETWEEN, "height"),
        (NOT_NULL, "city"),
        (NOT_NULL, "code"),
        (IN_SET, "code"),
        (NOT_NULL, "label"),
        (IN_SET, "label"),
    }
    folder = tmp_path / "contracts" / "people-v1"
    assert sorted(p.name for p in folder.iterdir()) == ["schema.json", "suite.json"]
    assert json.loads((folder / "schema.json").read_text()) == schema.to_dict()
    assert load_contract(tmp_path / "contracts", "people-v1") == contract
    assert "sample.csv (sha256 " in contract.suite_json["meta"]["description"]
    # The sample meets the contract inferred from it.
    report = check_file(contract, sample)
    assert (report.rows_received, report.rows_passed, report.quarantined) == (5, 5, ())


def test_init_from_parquet_keeps_arrow_types(tmp_path: Path) -> None:
    sample = tmp_path / "sample.parquet"
    table = pa.table(
        {
            "n": pa.array([1, 5, 3, 2], pa.int32()),
            "x": pa.array([0.5, float("nan"), -1.5, 2.5], pa.float32()),
            "tag": pa.array(["a", "a", None, "b"]),
            "y": pa.array([1, 0, 1, 1], pa.int8()),
        }
    )
    pq.write_table(table, sample)
    contract = infer_contract("typed-v1", read_table(sample), features=["x"], margin=0.0)
    assert [(c.name, c.dtype, c.nullable) for c in contract.schema.columns] == [
        ("n", "int", False),
        ("x", "float", False),  # NaN is a value to quarantine, not a null
        ("tag", "string", True),
        ("y", "int", False),
    ]
    rules = _expectations(contract.suite_json)
    assert rules[(BETWEEN, "x")] == {"column": "x", "min_value": -1.5, "max_value": 2.5}  # margin 0: exact
    assert rules[(IN_SET, "y")]["value_set"] == [0, 1]
    assert contract.schema.features == ("x",)
    report = validate(read_table(sample), contract).report
    assert report.quarantined == (QuarantinedRow(2, "x", "finite", "nan"),)


def test_init_refuses_to_overwrite_a_kind(tmp_path: Path, settings: Settings) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text(SAMPLE, encoding="utf-8")
    before = (settings.contracts_dir / "tabular-v1" / "suite.json").read_bytes()
    with pytest.raises(ConfigError, match=r"contract tabular-v1 already exists .* choose a new kind"):
        init_contract(settings.contracts_dir, "tabular-v1", sample)
    assert (settings.contracts_dir / "tabular-v1" / "suite.json").read_bytes() == before


@pytest.mark.parametrize(
    ("text", "kwargs", "fragment"),
    [
        (SAMPLE, {"kind": "../escape"}, "contract kind '../escape' is not allowed"),
        ("a,b\n", {}, "has no data rows"),
        (SAMPLE, {"label": "salary"}, "label 'salary' is not a column of the sample"),
        (SAMPLE, {"features": ["city", "ghost"]}, r"features \['ghost'\] are not schema columns"),
        ("a,row_number\n1,2\n", {}, "column name 'row_number' is reserved"),
        ("a b,c\n1,2\n", {}, "column name 'a b' is not allowed"),
    ],
)
def test_init_refusals_leave_no_folder(tmp_path: Path, text: str, kwargs: dict, fragment: str) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text(text, encoding="utf-8")
    kind = kwargs.pop("kind", "bad-v1")
    with pytest.raises(ConfigError, match=fragment):
        init_contract(tmp_path / "contracts", kind, sample, **kwargs)
    assert not (tmp_path / "contracts").exists() or list((tmp_path / "contracts").iterdir()) == []


def test_a_column_type_no_contract_holds_is_refused(tmp_path: Path) -> None:
    sample = tmp_path / "sample.parquet"
    pq.write_table(pa.table({"flag": pa.array([True, False]), "y": pa.array([0, 1])}), sample)
    with pytest.raises(ConfigError, match="sample column 'flag' has type bool"):
        infer_contract("flags-v1", read_table(sample))


def test_describe_puts_every_rule_in_words(settings: Settings) -> None:
    described = describe_contract(load_contract(settings.contracts_dir, "tabular-text-v1"))
    assert described["kind"] == "tabular-text-v1" and described["header"] == "x0,x1,country,sku,comment,label"
    columns = {c["name"]: c for c in described["columns"]}
    assert columns["x0"]["role"] == "feature" and columns["label"]["role"] == "label"
    assert columns["country"]["role"] is None
    assert columns["x0"]["rules"] == [
        "`x0` is a finite decimal number",
        "`x0` is never empty (null)",
        "`x0` is at least -1000 and at most 1000",
    ]
    assert columns["country"]["rules"][-1] == "`country` is one of 'AT', 'CH', 'DE', 'FR', 'IT'"
    assert columns["sku"]["rules"][-1] == "`sku` matches the regular expression `^[A-Z]{3}-[0-9]{4}$`"
    assert columns["comment"]["rules"] == [
        "`comment` is text or empty (null)",
        "`comment` does not match the regular expression `[\\u0000-\\u001f\\u007f]`",
    ]
    assert len(described["expectations"]) == 11
    assert all(e["description"] for e in described["expectations"])
    assert json.loads(json.dumps(described)) == described  # plain JSON for the CLI and artifacts


def test_check_file_validates_in_chunks_and_registers_nothing(tmp_path: Path, settings: Settings) -> None:
    contract = load_contract(settings.contracts_dir, "tabular-text-v1")
    rows = [
        "1,2,CH,ABC-0001,,1",
        "1,2,ch,ABC-0002,,1",  # 2: not in the set
        "1,2,DE,ABC-3,,0",  # 3: regex
        "1,abc,FR,ABC-0004,ok,0",  # 4: not a float
        "1,2,IT,ABC-0005,,7",  # 5: label not in the set
        "5000,2,AT,ABC-0006,,0",  # 6: out of range
        "1,2,AT,ABC-0007,,1",
    ]
    path = tmp_path / "contribution.csv"
    path.write_text("x0,x1,country,sku,comment,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    report = check_file(contract, path, limits=ReadLimits(chunk_rows=2))  # four chunks
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert [(q.row_number, q.column, q.expectation) for q in report.quarantined] == [
        (2, "country", IN_SET),
        (3, "sku", "expect_column_values_to_match_regex"),
        (4, "x1", "type:float"),
        (5, "label", IN_SET),
        (6, "x0", BETWEEN),
    ]
    assert (report.rows_received, report.rows_passed, report.first_row_number) == (7, 2, 1)
    whole = validate(read_table(path), contract).report  # one frame: the same verdicts
    assert [q.row_number for q in whole.quarantined] == [q.row_number for q in report.quarantined]


def test_check_file_refuses_drift_before_reading_rows(tmp_path: Path, settings: Settings) -> None:
    contract = load_contract(settings.contracts_dir, "tabular-text-v1")
    path = tmp_path / "drift.csv"
    path.write_text("x0,x1,country,sku,label\n1,2,CH,ABC-0001,1\n", encoding="utf-8")
    with pytest.raises(SchemaMismatch, match=r"^SCHEMA_MISMATCH: .*missing \['comment'\]"):
        check_file(contract, path)
    path.write_text("x0,x1,country,sku,comment,label\n", encoding="utf-8")
    with pytest.raises(UnreadableFile, match="no data rows"):
        check_file(contract, path)
