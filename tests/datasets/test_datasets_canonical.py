"""The canonical row encoding: exact bytes, normalisation, injectivity, and frame ids equal to row ids."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.config import PROJECT_ROOT
from databright.datasets import Column, Schema, canonical_row_bytes, record_id, record_ids
from databright.datasets import canonical as canon
from databright.datasets.versions import records_table
from databright.errors import DatasetError

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Combining marks and precomposed letters, so NFC has work to do, plus any other text.
texts = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="ae\u0301\u00e9\u0308\u00eb\u212b\u00c5Aこんにちは\U0001f600", max_size=8),
)
nullable_rows = st.tuples(
    st.one_of(st.none(), int64s), st.one_of(st.none(), finite_floats), st.one_of(st.none(), texts)
)
TAGS = {"int": 1, "float": 2, "string": 3}


def decode(schema: Schema, data: bytes) -> list[Any]:
    """An independent parser of the documented encoding: it must consume every byte exactly."""
    out: list[Any] = []
    at = 0
    for col in schema.columns:
        tag = data[at]
        at += 1
        if tag == 0:
            out.append(None)
            continue
        assert tag == TAGS[col.dtype], f"column {col.name}: tag {tag}"
        word = data[at : at + 8]
        at += 8
        if tag == 1:
            out.append(int.from_bytes(word, "big", signed=True))
        elif tag == 2:
            out.append(struct.unpack(">d", word)[0])
        else:
            length = int.from_bytes(word, "big")
            out.append(data[at : at + length].decode("utf-8"))
            at += length
    assert at == len(data)
    return out


def normalised(row: tuple | list) -> list[Any]:
    n, x, s = row
    return [n, None if x is None else float(x) + 0.0, None if s is None else unicodedata.normalize("NFC", s)]


def nullable_frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "n": pd.array([r[0] for r in rows], dtype="Int64"),
            "x": pd.array([r[1] for r in rows], dtype="Float64"),
            "s": pd.array([r[2] for r in rows], dtype="string"),
        }
    )


def test_bytes_are_the_documented_encoding(mixed_schema: Schema) -> None:
    expected = bytes.fromhex(
        "01" "0000000000000007"  # int 7, int64 big-endian
        "02" "3ff8000000000000"  # float 1.5, binary64 big-endian
        "03" "0000000000000005" "636166c3a9"  # "café": UTF-8 length 5, then the bytes
    )  # fmt: skip
    assert canonical_row_bytes(mixed_schema, [7, 1.5, "café"]) == expected
    assert canonical_row_bytes(mixed_schema, {"s": "café", "x": 1.5, "n": 7}) == expected
    assert record_id(mixed_schema, [7, 1.5, "café"]) == hashlib.sha256(expected).hexdigest()
    assert canonical_row_bytes(mixed_schema, [None, None, None]) == b"\x00\x00\x00"
    # negative ints in two's complement; ints widened in a float column; the empty string
    assert canonical_row_bytes(mixed_schema, [-2, 2, ""]) == bytes.fromhex(
        "01fffffffffffffffe" "024000000000000000" "030000000000000000"
    )  # fmt: skip
    assert canonical_row_bytes(mixed_schema, [np.int64(3), np.float32(0.5), None]) == bytes.fromhex(
        "010000000000000003" "023fe0000000000000" "00"
    )  # fmt: skip


def test_negative_zero_is_zero(mixed_schema: Schema) -> None:
    assert canonical_row_bytes(mixed_schema, [0, -0.0, "z"]) == canonical_row_bytes(
        mixed_schema, [0, 0.0, "z"]
    )
    assert canonical_row_bytes(mixed_schema, [0, -0.0, "z"])[9:18] == bytes.fromhex("020000000000000000")
    frame = pd.DataFrame({"n": [0, 0], "x": [-0.0, 0.0], "s": ["z", "z"]})
    ids = record_ids(frame, mixed_schema)
    assert ids[0] == ids[1] == record_id(mixed_schema, [0, 0.0, "z"])
    table = pa.table({"n": [0, 0], "x": [-0.0, 0.0], "s": ["z", "z"]})
    assert record_ids(table, mixed_schema) == ids


def test_strings_are_nfc(mixed_schema: Schema) -> None:
    composed, decomposed = "\u00e9t\u00e9", "e\u0301te\u0301"
    assert composed != decomposed
    assert record_id(mixed_schema, [1, 1.0, decomposed]) == record_id(mixed_schema, [1, 1.0, composed])
    assert (
        canonical_row_bytes(mixed_schema, [1, 1.0, decomposed])[18:]
        == b"\x03" + (5).to_bytes(8, "big") + "été".encode()
    )
    frame = pd.DataFrame({"n": [1, 1, 1], "x": [1.0, 1.0, 1.0], "s": [decomposed, composed, "ete"]})
    ids = record_ids(frame, mixed_schema)
    assert ids[0] == ids[1] != ids[2]


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([1, math.inf, "a"], "not finite"),
        ([1, math.nan, "a"], "not finite"),
        ([1, 10**400, "a"], "not finite"),
        ([True, 1.0, "a"], "not an integer"),
        ([1.0, 1.0, "a"], "not an integer"),
        ([2**63, 1.0, "a"], "64-bit integer range"),
        ([-(2**63) - 1, 1.0, "a"], "64-bit integer range"),
        ([1, "1.0", "a"], "not a number"),
        ([1, True, "a"], "not a number"),
        ([1, 1.0, 5], "not a string"),
        ([1, 1.0, b"a"], "not a string"),
        ([1, 1.0, "a\ud800"], "not valid Unicode"),
    ],
)
def test_values_of_the_wrong_kind_are_refused(mixed_schema: Schema, values: list, fragment: str) -> None:
    with pytest.raises(DatasetError, match=fragment):
        canonical_row_bytes(mixed_schema, values)


def test_row_shape_is_checked(mixed_schema: Schema) -> None:
    with pytest.raises(DatasetError, match="missing"):
        record_id(mixed_schema, {"n": 1, "x": 1.0})
    with pytest.raises(DatasetError, match="extra"):
        record_id(mixed_schema, {"n": 1, "x": 1.0, "s": "a", "t": 2})
    with pytest.raises(DatasetError, match="3 values"):
        record_id(mixed_schema, [1, 1.0])
    with pytest.raises(DatasetError, match=r"lacks schema columns \['s'\]"):
        record_ids(pd.DataFrame({"n": [1], "x": [1.0]}), mixed_schema)
    with pytest.raises(DatasetError, match=r"lacks schema columns \['n'\]"):
        record_ids(pa.table({"x": [1.0], "s": ["a"]}), mixed_schema)


@given(row=nullable_rows, order=st.permutations(["n", "x", "s"]))
@settings(max_examples=300, deadline=None)
def test_bytes_decode_back_to_the_normalised_row(mixed_schema: Schema, row: tuple, order: list[str]) -> None:
    """Parsing the bytes gives back the normalised values exactly, so the encoding is injective."""
    values = dict(zip(["n", "x", "s"], row, strict=True))
    data = canonical_row_bytes(mixed_schema, {k: values[k] for k in order})
    assert data == canonical_row_bytes(mixed_schema, list(row))
    assert decode(mixed_schema, data) == normalised(row)


@given(a=nullable_rows, b=nullable_rows)
@settings(max_examples=300, deadline=None)
def test_ids_differ_exactly_when_normalised_rows_differ(mixed_schema: Schema, a: tuple, b: tuple) -> None:
    same_row = normalised(a) == normalised(b)  # -0.0 is already +0.0 here, and no NaN is finite
    assert (record_id(mixed_schema, a) == record_id(mixed_schema, b)) == same_row


def test_nearby_values_never_collide(mixed_schema: Schema) -> None:
    """Cases a text or fixed-width encoding could confuse: lengths, nulls against empties, neighbours."""
    rows = [
        [None, None, None],
        [None, None, ""],
        [0, None, None],
        [None, 0.0, None],
        [1, 1.0, "1"],
        [1, 1.0 + 2**-52, "1"],
        [2**53, float(2**53), "x"],
        [2**53 + 1, float(2**53), "x"],
        [-1, -1.0, "x"],
        [1, 1.0, "\x00"],
        [1, 1.0, "\x00\x00"],
        [1, 1.0, "\x03"],
    ]
    ids = [record_id(mixed_schema, r) for r in rows]
    assert len(set(ids)) == len(rows)
    two = Schema(columns=(Column("a", "string"), Column("b", "string")), features=("a",), label="b")
    assert record_id(two, ["ab", "c"]) != record_id(two, ["a", "bc"])


@given(rows=st.lists(nullable_rows, max_size=40), batch=st.sampled_from([1, 3, 1000]))
@settings(max_examples=120, deadline=None)
def test_frame_ids_equal_row_ids(mixed_schema: Schema, rows: list[tuple], batch: int) -> None:
    """Pandas and Arrow inputs, hashlib and DuckDB hashing, any batch size: the ids of ``record_id``."""
    expected = [record_id(mixed_schema, list(r)) for r in rows]
    frame = nullable_frame(rows)
    table = pa.table(
        {
            "n": pa.array([r[0] for r in rows], pa.int64()),
            "x": pa.array([r[1] for r in rows], pa.float64()),
            "s": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    with mock.patch.object(canon, "BATCH_ROWS", batch):
        assert record_ids(frame, mixed_schema) == expected
        assert record_ids(table, mixed_schema) == expected
        assert canon.canonical_bytes_array(table, mixed_schema).to_pylist() == [
            canonical_row_bytes(mixed_schema, list(r)) for r in rows
        ]
        with mock.patch.object(canon, "DUCKDB_MIN_ROWS", 0):
            assert record_ids(frame, mixed_schema) == expected
            assert canon.record_id_array(table, mixed_schema).to_pylist() == expected


def test_duckdb_and_hashlib_agree_on_a_large_frame(mixed_schema: Schema, rng: np.random.Generator) -> None:
    n = canon.DUCKDB_MIN_ROWS + 1500
    ints = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    floats = rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, size=n)
    words = rng.choice(np.array(["", "a", "e\u0301", "日本", "x" * 40], dtype=object), size=n)
    frame = pd.DataFrame({"n": ints, "x": floats, "s": words})
    frame.loc[::7, "x"] = np.nan  # a NaN in a numpy float column is pandas' null
    frame.loc[::11, "s"] = None
    ids = record_ids(frame, mixed_schema)
    assert canon.record_id_array(frame, mixed_schema).to_pylist() == ids
    sample = range(0, n, 97)
    assert [ids[i] for i in sample] == [
        record_id(
            mixed_schema, [int(ints[i]), None if i % 7 == 0 else floats[i], None if i % 11 == 0 else words[i]]
        )
        for i in sample
    ]
    with mock.patch.object(canon, "BATCH_ROWS", 4096):
        assert record_ids(frame, mixed_schema) == ids


def test_frame_ids_agree_across_dtypes(mixed_schema: Schema) -> None:
    """Nullable, numpy, object and Arrow columns of the same values hash the same; NaN in a frame is null."""
    nullable = nullable_frame([(1, None, "a"), (None, 2.5, None)])
    numpy_style = pd.DataFrame({"n": [1, None], "x": [np.nan, 2.5], "s": ["a", None]}, dtype=object)
    numpy_style["x"] = numpy_style["x"].astype(float)
    arrow = pa.table({"n": pa.array([1, None]), "x": pa.array([None, 2.5]), "s": pa.array(["a", None])})
    narrow = pa.table(
        {
            "n": pa.array([1, None], pa.uint8()),
            "x": pa.array([None, 2.5], pa.float32()),
            "s": pa.array(["a", None]).dictionary_encode(),
        }
    )
    expected = [record_id(mixed_schema, [1, None, "a"]), record_id(mixed_schema, [None, 2.5, None])]
    assert record_ids(nullable, mixed_schema) == expected
    assert record_ids(numpy_style, mixed_schema) == expected
    assert record_ids(arrow, mixed_schema) == expected
    assert record_ids(arrow.to_batches()[0], mixed_schema) == expected
    assert record_ids(arrow.to_pandas(types_mapper=pd.ArrowDtype), mixed_schema) == expected
    assert record_ids(narrow, mixed_schema) == expected
    # ints in a float column are widened, as float() does
    widened = pd.DataFrame({"n": [1], "x": np.array([3], dtype=np.int32), "s": ["a"]})
    assert record_ids(widened, mixed_schema) == [record_id(mixed_schema, [1, 3.0, "a"])]


@pytest.mark.parametrize(
    ("column", "values", "fragment"),
    [
        ("x", pd.Series([1.0, np.inf]), r"frame row 1 \(0-based\): inf .* not finite"),
        (
            "x",
            pa.array([1.0, float("nan")]),
            r"frame row 1 \(0-based\): nan .* not finite",
        ),  # Arrow: NaN is not null
        ("x", pd.array([True, False]), "not a number"),
        ("n", pd.Series([1.0, 2.5]), r"frame row 0 \(0-based\): 1.0 .* not an integer"),
        ("n", pd.Series([True, False]), "not an integer"),
        ("n", pa.array([0, 2**63], pa.uint64()), r"frame row 1 \(0-based\): .*64-bit integer range"),
        (
            "n",
            pd.Series(np.array([0, 2**64 - 1], dtype=np.uint64)),
            r"frame row 1 \(0-based\): .*64-bit integer range",
        ),
        ("s", pd.Series(["a", 5], dtype=object), r"frame row 1 \(0-based\): 5 .* not a string"),
        ("s", pd.Series(["a", "b\udc80"], dtype=object), r"frame row 1 \(0-based\): .*not valid Unicode"),
        ("s", pa.array([b"a", b"b"]), r"frame row 0 \(0-based\): b'a' .* not a string"),
    ],
)
def test_frames_with_bad_values_are_refused_naming_the_row(
    mixed_schema: Schema, column: str, values: Any, fragment: str
) -> None:
    data: dict[str, Any] = {"n": pa.array([1, 2]), "x": pa.array([1.0, 2.0]), "s": pa.array(["a", "b"])}
    data[column] = values
    if isinstance(values, pa.Array):
        frame: pd.DataFrame | pa.Table = pa.table(data)
    else:
        frame = pd.DataFrame({k: (v.to_pandas() if isinstance(v, pa.Array) else v) for k, v in data.items()})
    with pytest.raises(DatasetError, match=fragment) as info:
        record_ids(frame, mixed_schema)
    assert info.value.context["column"] == column


def test_an_empty_frame_has_no_ids(mixed_schema: Schema) -> None:
    assert record_ids(nullable_frame([]), mixed_schema) == []
    assert canon.record_id_array(pa.table({"n": [], "x": [], "s": []}), mixed_schema).to_pylist() == []


def test_record_ids_are_the_same_in_another_process(tmp_path: Path, mixed_schema: Schema) -> None:
    frame = nullable_frame([(1, 0.1, "e\u0301"), (-5, -0.0, "日本"), (None, 1e300, None), (2**62, None, "")])
    frame["record_id"], frame["owner"] = "0" * 64, "alice"
    path = tmp_path / "records.parquet"
    pq.write_table(records_table(frame, mixed_schema), path)  # exactly how a version stores rows
    here = record_ids(frame, mixed_schema)
    script = (
        "import json, sys, pandas as pd, pyarrow.parquet as pq\n"
        "from databright.datasets import Schema, record_ids\n"
        "schema = Schema.from_dict(json.loads(sys.argv[2]))\n"
        "table = pq.read_table(sys.argv[1])\n"
        "frame = table.to_pandas(types_mapper=pd.ArrowDtype)\n"
        "print(json.dumps([record_ids(table, schema), record_ids(frame, schema)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), json.dumps(mixed_schema.to_dict())],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert json.loads(out.stdout) == [here, here]
    assert len(set(here)) == 4
