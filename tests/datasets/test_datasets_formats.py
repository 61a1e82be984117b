"""Reading files: CSV strictly as text, Parquet typed, anything unreadable refused with its line."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from databright.datasets import read_table
from databright.errors import UnreadableFile


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_csv_values_are_the_strings_in_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.csv", b'a,b,c\n1.50,,NA\n"x\ny",007, z \n\n')
    frame = read_table(path)
    assert list(frame.columns) == ["a", "b", "c"]
    assert frame["a"].tolist() == ["1.50", "x\ny"]  # quoted newline kept; blank line skipped
    assert frame["b"].tolist() == ["", "007"]  # empty stays empty (null is the contract's call)
    assert frame["c"].tolist() == ["NA", " z "]  # no NA guessing, no stripping
    assert all(isinstance(t, pd.StringDtype) for t in frame.dtypes)


def test_bom_is_stripped(tmp_path: Path) -> None:
    frame = read_table(_write(tmp_path, "bom.csv", "\ufeffa,b\n1,2\n".encode()))
    assert list(frame.columns) == ["a", "b"]


def test_header_only_is_an_empty_frame(tmp_path: Path) -> None:
    frame = read_table(_write(tmp_path, "h.csv", b"a,b\n"))
    assert list(frame.columns) == ["a", "b"] and len(frame) == 0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"a,b\n1,2\n3\n", "line 3 has 1 fields but the header has 2"),
        (b"a,b\n1,2,3\n", "line 2 has 3 fields but the header has 2"),
        (b"a,b\n1,\xff\n", "invalid UTF-8 at byte 6 (line 2)"),
        (b"a,b\n1,2\x00\n", "NUL byte at offset 7 (line 2)"),
        (b"", "the file is empty"),
        (b"a,a\n1,2\n", "names ['a'] more than once"),
        (b'a,b\n"1,2\n', "malformed CSV"),
    ],
)
def test_unreadable_csv_is_refused_with_its_line(tmp_path: Path, data: bytes, fragment: str) -> None:
    with pytest.raises(UnreadableFile, match=re.escape(fragment)):
        read_table(_write(tmp_path, "bad.csv", data))


def test_unknown_suffix_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFile, match=r"'\.xlsx'.*\.csv or \.parquet"):
        read_table(_write(tmp_path, "data.xlsx", b"a\n1\n"))


def test_size_cap(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.csv", b"a\n" + b"1\n" * 100)
    assert len(read_table(path, max_bytes=202)) == 100
    with pytest.raises(UnreadableFile, match="202 bytes, over the submission cap of 201"):
        read_table(path, max_bytes=201)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFile, match="does not exist"):
        read_table(tmp_path / "nope.csv")


def test_parquet_keeps_arrow_types_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"x": pa.array([1.0, None, float("nan")]), "n": pa.array([1, 2, None], pa.int32())}), path
    )
    frame = read_table(path)
    assert [str(t) for t in frame.dtypes] == ["double[pyarrow]", "int32[pyarrow]"]
    x = pa.Array.from_pandas(frame["x"])
    assert x.null_count == 1 and x.to_pylist()[2] != x.to_pylist()[2]  # null and NaN stay apart


def test_corrupt_parquet_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFile, match="not a readable Parquet file"):
        read_table(_write(tmp_path, "bad.parquet", b"PAR1 this is not parquet"))
