"""Contracts: the shipped tabular-v1, unknown kinds, and suites that disagree with their schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from databright.config import Settings
from databright.crypto import digest_json
from databright.datasets import Column, Contract, Schema, available_kinds, load_contract
from databright.errors import ConfigError, UnknownContract


def test_tabular_v1_is_what_the_brief_says(tabular: Contract) -> None:
    schema = tabular.schema
    assert schema.names == (*(f"f{i}" for i in range(8)), "label")
    assert schema.features == tuple(f"f{i}" for i in range(8)) and schema.label == "label"
    assert all(c.dtype == "float" and not c.nullable for c in schema.columns[:8])
    assert schema.column("label") == Column("label", "int", False)
    bounds = {
        e["kwargs"]["column"]: (e["kwargs"]["min_value"], e["kwargs"]["max_value"])
        for e in tabular.suite_json["expectations"]
        if e["type"] == "expect_column_values_to_be_between"
    }
    assert bounds == {f"f{i}": (-50.0, 50.0) for i in range(8)}
    label_sets = [
        e["kwargs"]["value_set"]
        for e in tabular.suite_json["expectations"]
        if e["type"] == "expect_column_values_to_be_in_set"
    ]
    assert label_sets == [[0, 1]]


def test_digests_cover_schema_and_suite(tabular: Contract) -> None:
    assert tabular.schema.digest == digest_json(tabular.schema.to_dict())
    assert tabular.digest == digest_json(
        {"kind": "tabular-v1", "schema": tabular.schema.to_dict(), "suite": tabular.suite_json}
    )
    assert Schema.from_dict(tabular.schema.to_dict()) == tabular.schema
    tighter = json.loads(json.dumps(tabular.suite_json))
    tighter["expectations"][1]["kwargs"]["max_value"] = 40.0
    assert Contract.build("tabular-v1", tabular.schema, tighter).digest != tabular.digest


def test_unknown_contract_names_the_available_kinds(settings: Settings) -> None:
    with pytest.raises(UnknownContract, match=r"available kinds: .*tabular-v1") as info:
        load_contract(settings.contracts_dir, "tabular-v9")
    assert isinstance(info.value, KeyError)
    assert "tabular-v1" in info.value.context["available"]
    with pytest.raises(UnknownContract):
        load_contract(settings.contracts_dir, "../tabular-v1")


def _contract_copy(tmp_path: Path, settings: Settings, kind: str) -> Path:
    folder = tmp_path / "contracts" / kind
    shutil.copytree(settings.contracts_dir / "tabular-v1", folder)
    return folder


def test_a_suite_naming_an_unknown_column_is_refused(tmp_path: Path, settings: Settings) -> None:
    folder = _contract_copy(tmp_path, settings, "broken-v1")
    suite = json.loads((folder / "suite.json").read_text())
    suite["expectations"].append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "f9"}})
    (folder / "suite.json").write_text(json.dumps(suite))
    assert available_kinds(folder.parent) == ["broken-v1"]
    with pytest.raises(ConfigError, match="names column 'f9', which is not in the schema"):
        load_contract(folder.parent, "broken-v1")


def test_a_non_nullable_column_needs_a_not_null_expectation(tmp_path: Path, settings: Settings) -> None:
    folder = _contract_copy(tmp_path, settings, "lax-v1")
    suite = json.loads((folder / "suite.json").read_text())
    suite["expectations"] = [
        e
        for e in suite["expectations"]
        if not (e["type"] == "expect_column_values_to_not_be_null" and e["kwargs"]["column"] == "f3")
    ]
    (folder / "suite.json").write_text(json.dumps(suite))
    with pytest.raises(ConfigError, match=r"\['f3'\] are not nullable"):
        load_contract(folder.parent, "lax-v1")


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"columns": [{"name": "a", "dtype": "decimal"}], "features": [], "label": "a"}, "dtype 'decimal'"),
        ({"columns": [{"name": "a", "dtype": "int"}], "features": ["b"], "label": "a"}, "features \\['b'\\]"),
        (
            {"columns": [{"name": "a", "dtype": "int"}], "features": ["a"], "label": "a"},
            "also listed as a feature",
        ),
        (
            {"columns": [{"name": "record_id", "dtype": "int"}], "features": [], "label": "record_id"},
            "reserved",
        ),
        ({"columns": [{"name": "a", "dtype": "int"}] * 2, "features": [], "label": "a"}, "more than once"),
        ({"columns": [], "features": []}, "missing \\['label'\\]"),
    ],
)
def test_bad_schemas_are_refused(schema: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Schema.from_dict(schema)


def test_a_malformed_contract_file_names_the_file(tmp_path: Path, settings: Settings) -> None:
    folder = _contract_copy(tmp_path, settings, "bad-v1")
    (folder / "schema.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"schema\.json is not valid UTF-8 JSON"):
        load_contract(folder.parent, "bad-v1")


def test_tabular_text_v1_checks_text_with_a_set_and_regular_expressions(settings: Settings) -> None:
    contract = load_contract(settings.contracts_dir, "tabular-text-v1")
    schema = contract.schema
    assert schema.names == ("x0", "x1", "country", "sku", "comment", "label")
    assert schema.features == ("x0", "x1") and schema.label == "label"
    assert [c.name for c in schema.columns if c.nullable] == ["comment"]
    rules = {(e["type"], e["kwargs"]["column"]): e["kwargs"] for e in contract.suite_json["expectations"]}
    assert rules[("expect_column_values_to_be_in_set", "country")]["value_set"] == [
        "AT",
        "CH",
        "DE",
        "FR",
        "IT",
    ]
    assert rules[("expect_column_values_to_match_regex", "sku")]["regex"] == "^[A-Z]{3}-[0-9]{4}$"
    assert (
        rules[("expect_column_values_to_not_match_regex", "comment")]["regex"] == "[\\u0000-\\u001f\\u007f]"
    )
    assert {"tabular-text-v1", "tabular-v1"} <= set(available_kinds(settings.contracts_dir))
    assert contract.to_dict() == {
        "kind": "tabular-text-v1",
        "digest": contract.digest,
        "schema": schema.to_dict(),
        "suite": contract.suite_json,
    }


@pytest.mark.parametrize("mostly", [0.95, 0, "1", True])
def test_mostly_is_refused_because_every_failing_row_is_quarantined(
    tabular: Contract, mostly: object
) -> None:
    suite = json.loads(json.dumps(tabular.suite_json))
    suite["expectations"][1]["kwargs"]["mostly"] = mostly
    with pytest.raises(
        ConfigError, match=r"expectation #1 \(expect_column_values_to_be_between\) has mostly="
    ):
        Contract.build("tolerant-v1", tabular.schema, suite)
    suite["expectations"][1]["kwargs"]["mostly"] = 1.0  # the default, stated: harmless
    assert Contract.build("tolerant-v1", tabular.schema, suite).kind == "tolerant-v1"
