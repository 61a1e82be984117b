"""The canonical row encoding: exact bytes, normalisation, and frame ids equal to row ids."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.config import PROJECT_ROOT
from databright.datasets import Schema, canonical_row_bytes, record_id, record_ids
from databright.datasets.versions import records_table
from databright.errors import DatasetError

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
texts = st.text(max_size=12)


def test_bytes_are_the_documented_encoding(mixed_schema: Schema) -> None:
    expected = b'[7,1.5,"caf\xc3\xa9"]'  # values in schema order, no spaces, UTF-8, no escapes
    assert canonical_row_bytes(mixed_schema, [7, 1.5, "café"]) == expected
    assert canonical_row_bytes(mixed_schema, {"s": "café", "x": 1.5, "n": 7}) == expected
    assert record_id(mixed_schema, [7, 1.5, "café"]) == hashlib.sha256(expected).hexdigest()
    assert canonical_row_bytes(mixed_schema, [None, None, None]) == b"[null,null,null]"
    # ints are widened in a float column; floats keep Python's shortest round-trip repr
    assert canonical_row_bytes(mixed_schema, [np.int64(3), 2, "a"]) == b'[3,2.0,"a"]'
    assert canonical_row_bytes(mixed_schema, [1, 0.1, "a"]) == b'[1,0.1,"a"]'


def test_negative_zero_is_zero(mixed_schema: Schema) -> None:
    assert canonical_row_bytes(mixed_schema, [0, -0.0, "z"]) == b'[0,0.0,"z"]'
    assert record_id(mixed_schema, [0, -0.0, "z"]) == record_id(mixed_schema, [0, 0.0, "z"])
    frame = pd.DataFrame({"n": [0, 0], "x": [-0.0, 0.0], "s": ["z", "z"]})
    ids = record_ids(frame, mixed_schema)
    assert ids[0] == ids[1] == record_id(mixed_schema, [0, 0.0, "z"])


def test_strings_are_nfc(mixed_schema: Schema) -> None:
    composed, decomposed = "\u00e9t\u00e9", "e\u0301te\u0301"
    assert composed != decomposed
    assert record_id(mixed_schema, [1, 1.0, decomposed]) == record_id(mixed_schema, [1, 1.0, composed])
    assert canonical_row_bytes(mixed_schema, [1, 1.0, decomposed]) == '[1,1.0,"été"]'.encode()


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([1, math.inf, "a"], "not finite"),
        ([1, math.nan, "a"], "not finite"),
        ([True, 1.0, "a"], "not an integer"),
        ([1.0, 1.0, "a"], "not an integer"),
        ([1, "1.0", "a"], "not a number"),
        ([1, 1.0, 5], "not a string"),
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


@given(
    n=st.one_of(st.none(), int64s),
    x=st.one_of(st.none(), finite_floats),
    s=st.one_of(st.none(), texts),
    order=st.permutations(["n", "x", "s"]),
)
@settings(max_examples=200, deadline=None)
def test_dict_order_does_not_matter_and_values_round_trip(
    mixed_schema: Schema, n: int | None, x: float | None, s: str | None, order: list[str]
) -> None:
    values = {"n": n, "x": x, "s": s}
    shuffled = {k: values[k] for k in order}
    data = canonical_row_bytes(mixed_schema, shuffled)
    assert data == canonical_row_bytes(mixed_schema, [n, x, s])
    # The bytes decode back to the normalised values exactly (floats included).
    decoded = json.loads(data)
    assert decoded[0] == n
    assert decoded[1] == (None if x is None else x + 0.0)
    assert decoded[2] == (None if s is None else unicodedata.normalize("NFC", s))


@given(a=st.tuples(int64s, finite_floats, texts), b=st.tuples(int64s, finite_floats, texts))
@settings(max_examples=200, deadline=None)
def test_different_rows_have_different_ids(mixed_schema: Schema, a: tuple, b: tuple) -> None:
    same = canonical_row_bytes(mixed_schema, a) == canonical_row_bytes(mixed_schema, b)
    assert (record_id(mixed_schema, a) == record_id(mixed_schema, b)) == same
    if a[0] != b[0]:
        assert record_id(mixed_schema, a) != record_id(mixed_schema, b)


@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), int64s), st.one_of(st.none(), finite_floats), st.one_of(st.none(), texts)
        ),
        max_size=30,
    )
)
@settings(max_examples=100, deadline=None)
def test_frame_ids_equal_row_ids(mixed_schema: Schema, rows: list[tuple]) -> None:
    frame = pd.DataFrame(
        {
            "n": pd.array([r[0] for r in rows], dtype="Int64"),
            "x": pd.array([r[1] for r in rows], dtype="Float64"),
            "s": pd.array([r[2] for r in rows], dtype="string"),
        }
    )
    assert record_ids(frame, mixed_schema) == [record_id(mixed_schema, list(r)) for r in rows]


def test_frame_ids_agree_across_dtypes(mixed_schema: Schema) -> None:
    """Nullable, numpy and Arrow columns of the same values hash the same; NaN in a frame is null."""
    nullable = pd.DataFrame(
        {
            "n": pd.array([1, None], dtype="Int64"),
            "x": pd.array([None, 2.5], dtype="Float64"),
            "s": pd.array(["a", None], dtype="string"),
        }
    )
    numpy_style = pd.DataFrame({"n": [1, None], "x": [np.nan, 2.5], "s": ["a", None]}, dtype=object)
    numpy_style["x"] = numpy_style["x"].astype(float)
    arrow = pa.table(
        {"n": pa.array([1, None]), "x": pa.array([None, 2.5]), "s": pa.array(["a", None])}
    ).to_pandas(types_mapper=pd.ArrowDtype)
    expected = [record_id(mixed_schema, [1, None, "a"]), record_id(mixed_schema, [None, 2.5, None])]
    assert record_ids(nullable, mixed_schema) == expected
    assert record_ids(numpy_style, mixed_schema) == expected
    assert record_ids(arrow, mixed_schema) == expected
    with pytest.raises(DatasetError, match="not finite"):
        record_ids(pd.DataFrame({"n": [1], "x": [np.inf], "s": ["a"]}), mixed_schema)


def test_record_ids_are_the_same_in_another_process(tmp_path: Path, mixed_schema: Schema) -> None:
    frame = pd.DataFrame(
        {
            "n": pd.array([1, -5, None, 2**62], dtype="Int64"),
            "x": pd.array([0.1, -0.0, 1e300, None], dtype="Float64"),
            "s": pd.array(["e\u0301", "日本", None, ""], dtype="string"),
        }
    )
    frame["record_id"], frame["owner"] = "0" * 64, "alice"
    path = tmp_path / "records.parquet"
    pq.write_table(records_table(frame, mixed_schema), path)  # exactly how a version stores rows
    here = record_ids(frame, mixed_schema)
    script = (
        "import json, sys, pandas as pd, pyarrow.parquet as pq\n"
        "from databright.datasets import Schema, record_ids\n"
        "schema = Schema.from_dict(json.loads(sys.argv[2]))\n"
        "frame = pq.read_table(sys.argv[1]).to_pandas(types_mapper=pd.ArrowDtype)\n"
        "print(json.dumps(record_ids(frame, schema)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), json.dumps(mixed_schema.to_dict())],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert json.loads(out.stdout) == here
    assert len(set(here)) == 4
