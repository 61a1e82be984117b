"""ReadLimits and CsvDialect: their checks, and each cap refusing with the cap's name and the way out."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from databright.datasets.formats import open_table
from databright.datasets.limits import CsvDialect, GiB, ReadLimits
from databright.errors import ConfigError, UnreadableFile


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refused(path: Path, **kwargs: object) -> UnreadableFile:
    with pytest.raises(UnreadableFile) as info, open_table(path, **kwargs) as source:  # type: ignore[arg-type]
        for _ in source.chunks():
            pass
    return info.value


def _rows_read(path: Path, **kwargs: object) -> int:
    with open_table(path, **kwargs) as source:  # type: ignore[arg-type]
        return sum(c.row_count for c in source.chunks())


# --- the declarations -----------------------------------------------------------------------------


def test_defaults_are_caps_not_infinities() -> None:
    limits = ReadLimits()
    assert limits.to_dict() == {
        "max_bytes": 2 * GiB,
        "max_uncompressed_bytes": 8 * GiB,
        "max_compression_ratio": 100.0,
        "max_members": 16,
        "max_rows": 50_000_000,
        "max_columns": 1_000,
        "max_row_groups": 100_000,
        "chunk_rows": 100_000,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_bytes = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_bytes", 0), ("chunk_rows", -1), ("max_rows", True), ("max_columns", 2.5), ("max_members", "9")],
)
def test_unusable_limits_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"ReadLimits\.{field} must be an integer of at least 1, got"):
        ReadLimits(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("ratio", [0.5, 0, float("nan"), True])
def test_an_unusable_ratio_is_refused(ratio: float) -> None:
    with pytest.raises(ConfigError, match=r"max_compression_ratio must be a number of at least 1"):
        ReadLimits(max_compression_ratio=ratio)


@pytest.mark.parametrize("spelling", ["utf-8", "UTF-8", "utf8", "utf-8-sig", "UTF_8"])
def test_utf8_in_any_spelling_is_accepted(spelling: str) -> None:
    assert CsvDialect(encoding=spelling).encoding == "utf-8"


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16", "no-such-codec"])
def test_other_encodings_are_refused_with_the_way_to_convert(encoding: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"encoding '{encoding}' is not accepted.*iconv -f {encoding} -t utf-8"
    ):
        CsvDialect(encoding=encoding)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"delimiter": ""}, "delimiter must be exactly one character"),
        ({"delimiter": ";;"}, "delimiter must be exactly one character"),
        ({"delimiter": "\n"}, "cannot be a line break or NUL"),
        ({"quotechar": "\x00"}, "cannot be a line break or NUL"),
        ({"delimiter": '"'}, "the delimiter and the quote character are both"),
    ],
)
def test_an_unusable_dialect_is_refused(kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        CsvDialect(**kwargs)


# --- each cap -------------------------------------------------------------------------------------


def test_a_file_over_the_byte_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.csv", b"a\n" + b"1\n" * 100)  # 202 bytes
    assert _rows_read(path, limits=ReadLimits(max_bytes=202)) == 100
    error = _refused(path, limits=ReadLimits(max_bytes=201))
    message = str(error)
    assert "big.csv is 202 bytes, over the submission cap of 201 bytes (ReadLimits.max_bytes)" in message
    assert "split it into smaller files and submit each, or raise the cap" in message
    assert (error.context["size"], error.context["limit"]) == (202, "max_bytes")


def test_the_byte_cap_counts_the_compressed_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.csv.gz", gzip.compress(b"a\n" + b"1\n" * 10_000))
    assert path.stat().st_size < 1_000
    assert _rows_read(path, limits=ReadLimits(max_bytes=1_000)) == 10_000


def test_the_uncompressed_cap_stops_a_gzip_stream(tmp_path: Path) -> None:
    path = _write(tmp_path, "wide.csv.gz", gzip.compress(b"a\n" + b"12345\n" * 100_000))
    error = _refused(path, limits=ReadLimits(max_uncompressed_bytes=100_000))
    assert "decompresses to more than 100,000 bytes, the cap (ReadLimits.max_uncompressed_bytes)" in str(
        error
    )
    assert "split the data into smaller files, or raise the cap" in str(error)


def test_the_uncompressed_cap_reads_a_zip_members_declared_size(tmp_path: Path) -> None:
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("d.csv", b"a\n" + b"1\n" * 1000)
    error = _refused(path, limits=ReadLimits(max_uncompressed_bytes=1000))
    assert "member 'd.csv' declares 2,002 bytes uncompressed, over the cap of 1,000" in str(error)


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_the_column_cap(tmp_path: Path, suffix: str) -> None:
    names = [f"c{i}" for i in range(6)]
    path = tmp_path / f"w.{suffix}"
    if suffix == "csv":
        path.write_text(",".join(names) + "\n" + ",".join("1" * 6) + "\n")
    elif suffix == "jsonl":
        path.write_text(json.dumps(dict.fromkeys(names, 1)) + "\n")
    else:
        pq.write_table(pa.table({n: [1] for n in names}), path)
    assert _rows_read(path, limits=ReadLimits(max_columns=6)) == 1
    error = _refused(path, limits=ReadLimits(max_columns=5))
    assert "6 columns, over the cap of 5" in str(error) and "ReadLimits.max_columns" in str(error)


def test_the_row_cap_stops_a_text_stream(tmp_path: Path) -> None:
    path = _write(tmp_path, "rows.csv", b"a\n" + b"1\n" * 25)
    assert _rows_read(path, limits=ReadLimits(max_rows=25, chunk_rows=10)) == 25
    error = _refused(path, limits=ReadLimits(max_rows=24, chunk_rows=10))
    assert "has more than 24 data rows, the cap (ReadLimits.max_rows)" in str(error)
    assert "split it into smaller files or raise the cap" in str(error) and error.context["row"] == 25


def test_parquet_caps_are_checked_on_the_footer_before_any_page(tmp_path: Path) -> None:
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"a": list(range(10))}), path, row_group_size=2)  # 5 row groups
    assert _rows_read(path, limits=ReadLimits(max_row_groups=5, max_rows=10)) == 10
    error = _refused(path, limits=ReadLimits(max_row_groups=4))
    assert "has 5 row groups, over the cap of 4 (ReadLimits.max_row_groups)" in str(error)
    assert "has 10 rows, over the cap of 9 (ReadLimits.max_rows)" in str(
        _refused(path, limits=ReadLimits(max_rows=9))
    )
    error = _refused(path, limits=ReadLimits(max_uncompressed_bytes=50))
    assert "uncompressed bytes, over the cap of 50 (ReadLimits.max_uncompressed_bytes)" in str(error)


def test_chunk_rows_bounds_every_chunk(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", b"a\n" + b"1\n" * 23)
    with open_table(path, limits=ReadLimits(chunk_rows=5)) as source:
        assert [c.row_count for c in source.chunks()] == [5, 5, 5, 5, 3]
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"a": list(range(23))}), parquet, row_group_size=7)
    with open_table(parquet, limits=ReadLimits(chunk_rows=5)) as source:
        sizes = [c.row_count for c in source.chunks()]
    assert sum(sizes) == 23 and max(sizes) <= 5


def test_a_line_without_an_end_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from databright.datasets import text_input

    monkeypatch.setattr(text_input, "MAX_LINE_BYTES", 3 * 1024 * 1024)
    path = _write(tmp_path, "one-line.jsonl", b'{"a": "' + b"x" * (5 * 1024 * 1024) + b'"}\n')
    error = _refused(path)
    assert "line 1 is longer than 3,145,728 characters" in str(error)
