"""Reading files in chunks: CSV and JSON Lines as text, Parquet typed; bad files refused with their line."""

from __future__ import annotations

import csv
import gc
import inspect
import io
import json
import re
import weakref
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from databright.crypto import digest_file
from databright.datasets import read_table
from databright.datasets.formats import TEXT_DTYPE, Chunk, open_table
from databright.datasets.limits import CsvDialect, ReadLimits
from databright.errors import DatabrightError, SchemaMismatch, UnreadableFile


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _read_all(path: Path, **kwargs: object) -> tuple[list[Chunk], pd.DataFrame]:
    with open_table(path, **kwargs) as source:  # type: ignore[arg-type]
        chunks = list(source.chunks())
    return chunks, pd.concat([c.frame for c in chunks], ignore_index=True)


def _refused(path: Path, error: type[DatabrightError] = UnreadableFile, **kwargs: object) -> DatabrightError:
    """Open and read to the end; the error may surface at open or from ``chunks()``."""
    with pytest.raises(error) as info, open_table(path, **kwargs) as source:  # type: ignore[arg-type]
        for _ in source.chunks():
            pass
    return info.value


# --- CSV happy paths ----------------------------------------------------------------------------


def test_csv_values_are_the_text_as_read_and_empty_is_missing(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.csv", b'a,b,c\r\n1.50,,NA\r\n"x\ny",007, z \r\n\r\n"q""uote","",3\r\n')
    with open_table(path) as source:
        assert (source.kind, source.compression, source.typed) == ("csv", None, False)
        assert source.columns == ("a", "b", "c")
        assert source.input_digest == digest_file(path)
        assert source.input_bytes == path.stat().st_size
        frame = pd.concat([c.frame for c in source.chunks()], ignore_index=True)
    assert all(dtype == TEXT_DTYPE for dtype in frame.dtypes)
    assert frame.astype(object).where(frame.notna(), None).to_dict("list") == {
        "a": ["1.50", "x\ny", 'q"uote'],  # quoted newline and doubled quote kept; blank line skipped
        "b": [None, "007", None],  # empty and "" are missing; no number guessing
        "c": ["NA", " z ", "3"],  # no NA guessing, no stripping
    }


def test_csv_chunks_number_data_rows_from_one_skipping_blank_lines(tmp_path: Path) -> None:
    lines = ["n"] + [str(i) if i % 3 else "" for i in range(1, 11)]  # every third line blank
    path = _write(tmp_path, "n.csv", ("\n".join(lines) + "\n").encode())
    chunks, frame = _read_all(path, limits=ReadLimits(chunk_rows=2))
    expected = [str(i) for i in range(1, 11) if i % 3]
    assert frame["n"].tolist() == expected
    assert [c.first_row_number for c in chunks] == [1, 3, 5, 7]
    assert [c.row_count for c in chunks] == [2, 2, 2, 1]
    assert chunks[-1].last_row_number == len(expected)


def test_declared_delimiter_and_quote(tmp_path: Path) -> None:
    path = _write(tmp_path, "semi.csv", b"a;b\n'x;y';2\n")
    _, frame = _read_all(path, dialect=CsvDialect(delimiter=";", quotechar="'"))
    assert frame.to_dict("list") == {"a": ["x;y"], "b": ["2"]}


def test_bom_is_stripped_explicitly(tmp_path: Path) -> None:
    path = _write(tmp_path, "bom.csv", "\ufeffa,b\n\ufeff1,2\n".encode())
    with open_table(path) as source:
        assert source.columns == ("a", "b")  # not "\ufeffa"
        frame = next(source.chunks()).frame
    assert frame["a"].tolist() == ["\ufeff1"]  # only the leading mark is a BOM; later ones are data


def test_reading_twice_and_interleaved_passes_agree(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", b"a\n" + b"".join(b"%d\n" % i for i in range(10)))
    with open_table(path, limits=ReadLimits(chunk_rows=3)) as source:
        first = [c.frame["a"].tolist() for c in source.chunks()]
        one, two = source.chunks(), source.chunks()
        interleaved = [(next(one).frame["a"].tolist(), next(two).frame["a"].tolist()) for _ in range(4)]
    assert first == [["0", "1", "2"], ["3", "4", "5"], ["6", "7", "8"], ["9"]]
    assert [a for a, _ in interleaved] == first and [b for _, b in interleaved] == first


def test_a_closed_source_refuses_to_read(tmp_path: Path) -> None:
    source = open_table(_write(tmp_path, "t.csv", b"a\n1\n"))
    source.close()
    with pytest.raises(UnreadableFile, match="was closed; open it again"):
        next(source.chunks())


def test_a_file_changed_while_read_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", b"a\n1\n2\n")
    with open_table(path) as source:
        with path.open("r+b") as f:  # same inode, same size, other bytes
            f.seek(4)
            f.write(b"9")
        with pytest.raises(UnreadableFile, match="changed while it was being read"):
            list(source.chunks())


def test_display_name_labels_messages_only(tmp_path: Path) -> None:
    path = _write(tmp_path, "upload-7f3a.csv", b"a,b\n1\n")
    with pytest.raises(UnreadableFile, match=r"^\.\./\.\./etc/passwd\.csv: line 2") as info:
        list(open_table(path, display_name="../../etc/passwd.csv").chunks())
    assert info.value.context["file"] == "../../etc/passwd.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload-7f3a.csv"]  # nothing written anywhere


def test_a_symlink_given_as_the_input_is_read_through(tmp_path: Path) -> None:
    target = _write(tmp_path, "real.csv", b"a\n1\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with open_table(link) as source:
        assert source.input_digest == digest_file(target)
        assert next(source.chunks()).frame["a"].tolist() == ["1"]
    assert target.read_bytes() == b"a\n1\n"


def test_to_dict_describes_what_was_opened(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", b"a|b\n1|2\n")
    with open_table(path, dialect=CsvDialect(delimiter="|"), display_name="mine.csv") as source:
        described = source.to_dict()
    assert json.loads(json.dumps(described)) == described
    assert described["display_name"] == "mine.csv" and described["columns"] == ["a", "b"]
    assert described["dialect"] == {"delimiter": "|", "quotechar": '"', "encoding": "utf-8"}
    assert described["input_digest"] == digest_file(path)


def test_a_large_csv_streams_one_chunk_at_a_time(tmp_path: Path) -> None:
    """~40 MB in chunks of 10k rows: the reader holds no earlier chunk and reads the file as it goes."""
    path = tmp_path / "big.csv"
    rows = 100_000
    cell = "x" * 95
    with path.open("w", encoding="utf-8") as f:
        f.write("id,a,b,c\n")
        for start in range(0, rows, 10_000):
            f.write("".join(f"{i},{cell},{cell},{cell}\n" for i in range(start, start + 10_000)))
    size = path.stat().st_size
    assert size > 29_000_000
    with open_table(path, limits=ReadLimits(chunk_rows=10_000)) as source:
        chunks = source.chunks()
        assert inspect.isgenerator(chunks)
        previous: weakref.ref[pd.DataFrame] | None = None
        seen = 0
        for chunk in chunks:
            if previous is not None:
                gc.collect()
                assert previous() is None  # the reader kept no reference to the chunk before
            assert chunk.first_row_number == seen + 1
            assert chunk.row_count == 10_000
            assert chunk.frame["id"].iloc[0] == str(seen)
            if seen == 0:
                assert chunk.input_bytes_read < size / 4  # the first chunk did not need the whole file
            seen += chunk.row_count
            previous = weakref.ref(chunk.frame)
            del chunk
        assert seen == rows


# --- CSV bad input (issue 4) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        (b"a,b\n1,2\n3\n", 3, "line 3 has 1 fields but the header has 2 (a, b)"),
        (b"a,b\n1,2,3\n", 2, "line 2 has 3 fields but the header has 2"),
        (b'a,b\n"multi\nline",1\n\n4,5,6\n', 5, "line 5 has 3 fields but the header has 2"),
    ],
)
def test_ragged_rows_are_refused_naming_the_line(
    tmp_path: Path, data: bytes, line: int, fragment: str
) -> None:
    error = _refused(_write(tmp_path, "ragged.csv", data))
    assert fragment in str(error) and "fix the row's delimiters or quoting" in str(error)
    assert error.context["line"] == line


def test_a_ragged_row_deep_in_the_file_is_found_on_the_fast_path(tmp_path: Path) -> None:
    body = "".join(f'"{i}\nwrapped",{i}\n' for i in range(100))  # each row spans two lines
    path = _write(tmp_path, "deep.csv", ("a,b\n" + body + "1,2,3\n").encode())
    error = _refused(path, limits=ReadLimits(chunk_rows=7))
    assert error.context["line"] == 202 and "line 202 has 3 fields" in str(error)


def test_invalid_utf8_is_refused_naming_the_byte_and_line(tmp_path: Path) -> None:
    error = _refused(_write(tmp_path, "latin.csv", "a,b\n1,2\nx,caf\u00e9\n".encode("latin-1")))
    assert "invalid UTF-8 at byte 13 (line 3)" in str(error) and "re-encode the file as UTF-8" in str(error)
    assert (error.context["offset"], error.context["line"]) == (13, 3)


def test_invalid_utf8_across_a_block_boundary_names_the_absolute_offset(tmp_path: Path) -> None:
    # The reader decodes 1 MiB blocks: put a lead byte last in the first block, its bad follower first
    # in the second, so the decoder's pending byte must be counted back.
    head = b"a\n" + (b"x" * 99 + b"\n") * 10_485 + b"y" * 72 + b"\n"
    assert len(head) == 1024 * 1024 - 1
    error = _refused(_write(tmp_path, "split.csv", head + b"\xc3\x28\n"))
    assert error.context["offset"] == len(head) and error.context["line"] == head.count(b"\n") + 1


def test_nul_bytes_are_refused_naming_offset_and_line(tmp_path: Path) -> None:
    error = _refused(_write(tmp_path, "nul.csv", b"a,b\n1,2\x00\n"))
    assert "NUL byte at offset 7 (line 2)" in str(error) and "export it again as UTF-8" in str(error)


@pytest.mark.parametrize(
    ("data", "likely"), [(b"a;b\n1;2\n", ";"), (b"a\tb\n1\t2\n", "\t"), (b"a|b\n1|2\n", "|")]
)
def test_a_wrong_delimiter_is_refused_naming_the_likely_one(tmp_path: Path, data: bytes, likely: str) -> None:
    error = _refused(_write(tmp_path, "semi.csv", data))
    assert f"CsvDialect(delimiter={likely!r})" in str(error) and "declare the delimiter" in str(error)
    assert error.context["likely_delimiter"] == likely


def test_a_comma_file_declared_semicolon_is_refused_too(tmp_path: Path) -> None:
    error = _refused(_write(tmp_path, "c.csv", b"a,b\n1,2\n"), dialect=CsvDialect(delimiter=";"))
    assert "CsvDialect(delimiter=',')" in str(error)


@pytest.mark.parametrize("data", [b"", b"\n\n", "\ufeff".encode()])
def test_an_empty_file_is_refused(tmp_path: Path, data: bytes) -> None:
    error = _refused(_write(tmp_path, "empty.csv", data))
    assert "is empty" in str(error) and "header" in str(error)


def test_a_header_without_rows_is_refused(tmp_path: Path) -> None:
    error = _refused(_write(tmp_path, "h.csv", b"a,b\n\n"))
    assert "has a header but no data rows" in str(error) and "add the rows" in str(error)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'a,b\n"1,2\n', "malformed CSV near line 2: unexpected end of data"),
        (b'a,b\n"x"y,2\n', "malformed CSV near line 2"),
        (b"a,a\n1,2\n", "names ['a'] more than once"),
        (b"a,b,\n1,2,3\n", "column 3 of the header has no name"),
        (b"\x1f\x8b\x08\x00rest", "starts like a .gz file"),
    ],
)
def test_other_unreadable_csv(tmp_path: Path, data: bytes, fragment: str) -> None:
    assert fragment in str(_refused(_write(tmp_path, "bad.csv", data)))


# --- JSON Lines -----------------------------------------------------------------------------------


def test_jsonl_values_become_their_text(tmp_path: Path) -> None:
    lines = [
        '{"n": 1.50, "s": "x", "b": true, "z": null}',
        "",
        '{"z": "", "b": false, "s": "say \\"hi\\"", "n": -7}',
        '{"n": NaN, "s": "1e5", "b": null, "z": 1e5}',
    ]
    path = _write(tmp_path, "r.ndjson", ("\r\n".join(lines) + "\n").encode())
    chunks, frame = _read_all(path, limits=ReadLimits(chunk_rows=2))
    assert [c.first_row_number for c in chunks] == [1, 3]
    assert list(frame.columns) == ["n", "s", "b", "z"]  # the first object's key order
    assert frame.astype(object).where(frame.notna(), None).to_dict("list") == {
        "n": ["1.50", "-7", "NaN"],  # the literal text: the contract quarantines NaN
        "s": ["x", 'say "hi"', "1e5"],
        "b": ["true", "false", None],
        "z": [None, None, "1e5"],
    }


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"a": 1}', '{"a": {"x": 1}}'], "line 2, key 'a' holds a nested object"),
        (['{"a": [1, 2]}'], "line 1, key 'a' holds a nested array"),
        (
            ['{"a": 1}', '{"a": 1, "b": 2}'],
            "line 2 has different keys from the first object (missing [], extra ['b'])",
        ),
        (['{"a": 1}', '{"b": 1}'], "missing ['a'], extra ['b']"),
        (['{"a": 1}', "[1]"], "line 2 is a JSON list, not an object"),
        (['{"a": 1}', "{oops}"], "line 2 is not valid JSON"),
        (['{"a": 1, "a": 2}'], "line 1 repeats the key 'a'"),
        (["", "  "], "the file is empty"),
    ],
)
def test_bad_jsonl_is_refused_naming_the_line(tmp_path: Path, lines: list[str], fragment: str) -> None:
    error = _refused(_write(tmp_path, "bad.jsonl", ("\n".join(lines) + "\n").encode()))
    assert fragment in str(error)


# --- Parquet ------------------------------------------------------------------------------------


def test_parquet_streams_row_groups_keeping_arrow_types_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table = pa.table(
        {"x": pa.array([1.0, None, float("nan"), 4.0]), "n": pa.array([1, 2, None, 4], pa.int32())}
    )
    pq.write_table(table, path, row_group_size=3)
    with open_table(path, limits=ReadLimits(chunk_rows=2)) as source:
        assert (source.kind, source.typed, source.columns) == ("parquet", True, ("x", "n"))
        assert source.arrow_schema is not None and source.arrow_schema.field("n").type == pa.int32()
        chunks = list(source.chunks())
    assert [c.row_count for c in chunks] == [2, 2]
    frame = pd.concat([c.frame for c in chunks], ignore_index=True)
    assert [str(t) for t in frame.dtypes] == ["double[pyarrow]", "int32[pyarrow]"]
    x = pa.Array.from_pandas(frame["x"])
    assert x.null_count == 1 and x.to_pylist()[2] != x.to_pylist()[2]  # null and NaN stay apart


def test_a_stored_pandas_index_is_not_a_column(tmp_path: Path) -> None:
    path = tmp_path / "i.parquet"
    pd.DataFrame({"v": [1, 2]}, index=pd.Index([10, 20], name="key")).to_parquet(path)
    _, frame = _read_all(path)
    assert list(frame.columns) == ["v"] and frame["v"].tolist() == [1, 2]


def test_a_corrupted_parquet_footer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)
    data = bytearray(path.read_bytes())
    data[-12:-4] = b"\xff" * 8  # the footer length and the end of its metadata
    error = _refused(_write(tmp_path, "broken.parquet", bytes(data)))
    assert "not a readable Parquet file" in str(error) and "footer" in str(error)
    assert "write it again" in str(error)
    assert "not a readable Parquet file" in str(
        _refused(_write(tmp_path, "junk.parquet", b"PAR1 not parquet"))
    )


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("tags", pa.array([["a"], ["b", "c"]])),
        ("point", pa.array([{"x": 1, "y": 2}, {"x": 3, "y": 4}])),
        ("attrs", pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64()))),
    ],
)
def test_nested_parquet_columns_are_refused_naming_the_column(
    tmp_path: Path, column: str, values: pa.Array
) -> None:
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"id": [1, 2], column: values}), path)
    error = _refused(path, SchemaMismatch)
    assert f"column {column!r} has the nested type" in str(error) and "flatten it" in str(error)
    assert error.context["column"] == column


def test_a_parquet_without_rows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), path)
    assert "has a header but no data rows" in str(_refused(path))


# --- read_table: the whole file, for existing callers --------------------------------------------


def test_read_table_keeps_strings_with_empty_for_missing(tmp_path: Path) -> None:
    frame = read_table(_write(tmp_path, "a.csv", b"a,b\n1.50,\n"))
    assert frame.to_dict("list") == {"a": ["1.50"], "b": [""]}
    assert all(isinstance(t, pd.StringDtype) for t in frame.dtypes)


def test_read_table_gives_an_empty_frame_for_a_header_only_file(tmp_path: Path) -> None:
    frame = read_table(_write(tmp_path, "h.csv", b"a,b\n"))
    assert list(frame.columns) == ["a", "b"] and len(frame) == 0
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), path)
    assert [str(t) for t in read_table(path).dtypes] == ["int64[pyarrow]"]


def test_read_table_refuses_what_open_table_refuses(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFile, match=r"'\.xlsx'.*\.csv, \.jsonl/\.ndjson or \.parquet"):
        read_table(_write(tmp_path, "data.xlsx", b"a\n1\n"))
    with pytest.raises(UnreadableFile, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(UnreadableFile, match=re.escape("202 bytes, over the submission cap of 201")):
        read_table(_write(tmp_path, "big.csv", b"a\n" + b"1\n" * 100), max_bytes=201)


# --- round trips (hypothesis) ---------------------------------------------------------------------

_names = st.lists(st.text("abcdefghij", min_size=1, max_size=4), min_size=1, max_size=4, unique=True)
_cell = st.none() | st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1
)
_round_trip = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_round_trip
@given(names=_names, data=st.data(), chunk_rows=st.integers(1, 5))
def test_csv_round_trip(tmp_path: Path, names: list[str], data: st.DataObject, chunk_rows: int) -> None:
    rows = data.draw(
        st.lists(st.lists(_cell, min_size=len(names), max_size=len(names)), min_size=1, max_size=12)
    )
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(names)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    path = _write(tmp_path, "rt.csv", buffer.getvalue().encode())
    chunks, frame = _read_all(path, limits=ReadLimits(chunk_rows=chunk_rows))
    assert all(c.row_count <= chunk_rows for c in chunks)
    assert frame.astype(object).where(frame.notna(), None).values.tolist() == rows


_json_value = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1)
)


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)  # true/false, and the exact literal a number was written as


@_round_trip
@given(names=_names, data=st.data(), chunk_rows=st.integers(1, 5))
def test_jsonl_round_trip(tmp_path: Path, names: list[str], data: st.DataObject, chunk_rows: int) -> None:
    rows = data.draw(
        st.lists(st.lists(_json_value, min_size=len(names), max_size=len(names)), min_size=1, max_size=12)
    )
    lines = [json.dumps(dict(zip(names, row, strict=True))) for row in rows]
    path = _write(tmp_path, "rt.jsonl", ("\n".join(lines) + "\n").encode())
    _, frame = _read_all(path, limits=ReadLimits(chunk_rows=chunk_rows))
    assert frame.astype(object).where(frame.notna(), None).values.tolist() == [
        [_as_text(v) for v in row] for row in rows
    ]


@_round_trip
@given(
    data=st.data(),
    n=st.integers(1, 30),
    row_group_size=st.integers(1, 8),
    chunk_rows=st.integers(1, 9),
)
def test_parquet_round_trip(
    tmp_path: Path, data: st.DataObject, n: int, row_group_size: int, chunk_rows: int
) -> None:
    def column(values: st.SearchStrategy[object], arrow_type: pa.DataType) -> pa.Array:
        return pa.array(data.draw(st.lists(st.none() | values, min_size=n, max_size=n)), arrow_type)

    table = pa.table(
        {
            "i": column(st.integers(-(2**63), 2**63 - 1), pa.int64()),
            "f": column(st.floats(allow_nan=False), pa.float64()),
            "s": column(st.text(st.characters(blacklist_categories=("Cs",))), pa.string()),
            "b": column(st.booleans(), pa.bool_()),
        }
    )
    path = tmp_path / "rt.parquet"
    pq.write_table(table, path, row_group_size=row_group_size)
    chunks, frame = _read_all(path, limits=ReadLimits(chunk_rows=chunk_rows))
    assert all(c.row_count <= chunk_rows for c in chunks)
    assert pa.Table.from_pandas(frame, preserve_index=False).equals(table)
