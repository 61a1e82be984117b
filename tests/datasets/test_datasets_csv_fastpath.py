"""The Arrow CSV fast path against the strict ``csv`` pass: the same chunks, or the same refusal.

Every test reads a file with ``csv_engine="python"`` (the strict reference) and ``"arrow"`` (the
fast path, which falls back to the strict pass wherever the two could disagree) and requires the
same outcome: identical chunk frames with identical first row numbers, or ``UnreadableFile`` with
the same message after the same chunks. ``TableSource.csv_fallback`` shows which inputs the fast
path read itself, so that a test can tell it from a silent fallback.
"""

from __future__ import annotations

import csv
import gzip
import io
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from unittest import mock

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from databright.datasets import csv_reader, text_input
from databright.datasets.formats import open_table
from databright.datasets.limits import CsvDialect, ReadLimits
from databright.errors import ConfigError, UnreadableFile

DIALECTS = (
    CsvDialect(),
    CsvDialect(delimiter=";", quotechar="'"),
    CsvDialect(delimiter="\t"),
    CsvDialect(delimiter=" ", quotechar="|"),
)


@dataclass
class Outcome:
    chunks: list[tuple[int, pd.DataFrame]]
    error: str | None
    fallback: str | None


def _read(path: Path, engine: str, chunk_rows: int, dialect: CsvDialect, **limits: int) -> Outcome:
    chunks: list[tuple[int, pd.DataFrame]] = []
    fallback = None
    try:
        with open_table(
            path,
            limits=ReadLimits(chunk_rows=chunk_rows, **limits),
            dialect=dialect,
            csv_engine=engine,  # type: ignore[arg-type]
        ) as source:
            try:
                for chunk in source.chunks():
                    chunks.append((chunk.first_row_number, chunk.frame))
            finally:
                fallback = source.csv_fallback
    except UnreadableFile as exc:
        return Outcome(chunks, str(exc), fallback)
    return Outcome(chunks, None, fallback)


def _same(
    path: Path, chunk_rows: int = 1000, dialect: CsvDialect = DIALECTS[0], **limits: int
) -> tuple[Outcome, Outcome]:
    """Read ``path`` both ways and check the outcomes are the same; return (strict, fast)."""
    strict = _read(path, "python", chunk_rows, dialect, **limits)
    fast = _read(path, "arrow", chunk_rows, dialect, **limits)
    assert fast.error == strict.error
    shared = len(strict.chunks)
    if strict.error is not None:
        # Both refuse the file whole; the strict pass reads its text a MiB ahead, so it may stop a
        # few chunks earlier or later than the fast path. The chunks both handed on are the same.
        shared = min(shared, len(fast.chunks))
    else:
        assert len(fast.chunks) == shared
    for (got_first, got), (want_first, want) in zip(
        fast.chunks[:shared], strict.chunks[:shared], strict=True
    ):
        assert got_first == want_first
        pd.testing.assert_frame_equal(got, want)
        assert len(got) <= chunk_rows
    sizes = [len(frame) for _, frame in strict.chunks]
    assert all(size == chunk_rows for size in sizes[:-1])  # cut at the same rows: full chunks
    assert strict.fallback is None
    return strict, fast


@contextmanager
def _blocks_of(size: int) -> Iterator[None]:
    """The fast path reading ``size`` bytes at a time, to put block edges everywhere."""
    with mock.patch.object(csv_reader, "ARROW_BLOCK", size):
        yield


def _values(outcome: Outcome) -> list[list[str | None]]:
    frame = pd.concat([f for _, f in outcome.chunks], ignore_index=True)
    return frame.astype(object).where(frame.notna(), None).values.tolist()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- the differential property ---------------------------------------------------------------------

_BOM = "\ufeff".encode()
_TEXT = [b"a", b"1", b"xyz", b" ", b"\t", b";", b",", b"'", b"|", b"\x0b\x0c", "é\x85\u2028".encode(), _BOM]
_BREAKS = [b"\n", b"\r\n", b"\r"]
_JUNK = [b'"', b"'", b"\r", b"\n", b",", b";", b"\t", b"\xc3", b"\xff", b"\x00", b"\xe2\x82", _BOM]
_HEADERS = {d: d.delimiter.join(["a", "b", "c"]).encode() for d in DIALECTS}
_property = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def _field(draw: st.DrawFn, dialect: CsvDialect, stray: bool) -> bytes:
    """Mostly a field a writer could have written (plain, or quoted around delimiters, quotes and line
    breaks), sometimes with a stray byte in it or after its closing quote."""
    quote, delimiter = dialect.quotechar.encode(), dialect.delimiter.encode()
    text = st.sampled_from([t for t in _TEXT if t not in (quote, delimiter)])
    kind = draw(st.sampled_from(["plain", "plain", "quoted", "quoted", "empty"] + ["stray"] * stray))
    if kind == "empty":
        return b""
    if kind == "plain":
        return b"".join(draw(st.lists(text, min_size=1, max_size=4)))
    inside = st.sampled_from([*_TEXT, delimiter, quote + quote, *_BREAKS])
    if kind == "quoted":
        return quote + b"".join(draw(st.lists(inside, max_size=5))) + quote
    parts = draw(st.lists(st.sampled_from([*_TEXT, quote, quote + quote, *_JUNK]), min_size=1, max_size=5))
    return b"".join(parts)


@st.composite
def _csv_bytes(draw: st.DrawFn, dialect: CsvDialect) -> bytes:
    """A header (usually a good one), then rows of (usually) three fields, ended by any line break,
    with blank lines and stray bytes sprinkled in."""
    delimiter = dialect.delimiter.encode()
    if draw(st.integers(0, 9)):
        head = draw(st.sampled_from([b"", _BOM, _BOM * 2, b"\n"])) + _HEADERS[dialect]
    else:
        head = b"".join(draw(st.lists(st.sampled_from([*_TEXT, *_JUNK]), max_size=6)))
    out = [head + draw(st.sampled_from(_BREAKS))]
    for i in range(draw(st.integers(1, 8))):
        # The first row is usually clean, so that the file opens and the rest is streamed.
        chaos = draw(st.integers(0, 9)) == 0 if i == 0 else draw(st.integers(0, 3)) == 0
        width = draw(st.integers(0, 4)) if chaos and draw(st.booleans()) else 3
        row = delimiter.join(draw(st.lists(_field(dialect, chaos), min_size=width, max_size=width)))
        out.append(row + draw(st.sampled_from([*_BREAKS, b"\n\n", b"\r\n\r\n", b"\n\r"])))
    if draw(st.booleans()):
        out[-1] = out[-1].rstrip(b"\r\n")  # no line break after the last row
    return b"".join(out)


@_property
@given(
    data=st.data(),
    dialect=st.sampled_from(DIALECTS),
    chunk_rows=st.sampled_from([1, 3, 1000]),
    block=st.sampled_from([1, 2, 3, 5, 8, 64, csv_reader.ARROW_BLOCK]),
)
@example(data=None, dialect=DIALECTS[0], chunk_rows=1, block=3).via("a closing quote then text")
def test_fast_and_strict_agree_on_any_text(
    data: st.DataObject | None, dialect: CsvDialect, chunk_rows: int, block: int
) -> None:
    raw = b'a,b,c\n1,"2"x,3\n' if data is None else data.draw(_csv_bytes(dialect))
    with tempfile.TemporaryDirectory() as folder, _blocks_of(block):
        _same(_write(Path(folder), "t.csv", raw), chunk_rows, dialect)


_cell = st.text(st.sampled_from(list(",;\t\"'| \r\nab1é€ü\x0b\x85\u2028")), max_size=6)
_WRITERS = [(csv.QUOTE_MINIMAL, "\r\n"), (csv.QUOTE_ALL, "\n"), (csv.QUOTE_ALL, "\r")]


@_property
@given(
    data=st.data(),
    dialect=st.sampled_from(DIALECTS),
    writer=st.sampled_from(_WRITERS),
    chunk_rows=st.sampled_from([1, 3, 1000]),
    block=st.sampled_from([1, 4, 7, 64, csv_reader.ARROW_BLOCK]),
)
def test_well_formed_csv_is_read_by_the_fast_path_itself(
    data: st.DataObject,
    dialect: CsvDialect,
    writer: tuple[Literal[0, 1, 2, 3], str],
    chunk_rows: int,
    block: int,
) -> None:
    """What a CSV writer produces, however odd its values, never needs the strict pass."""
    width = data.draw(st.integers(1, 4))
    rows = data.draw(st.lists(st.lists(_cell, min_size=width, max_size=width), min_size=1, max_size=12))
    buffer = io.StringIO(newline="")
    quoting, end = writer
    out = csv.writer(
        buffer, delimiter=dialect.delimiter, quotechar=dialect.quotechar, quoting=quoting, lineterminator=end
    )
    out.writerow([f"c{i}" for i in range(width)])
    out.writerows(rows)
    with tempfile.TemporaryDirectory() as folder, _blocks_of(block):
        strict, fast = _same(_write(Path(folder), "w.csv", buffer.getvalue().encode()), chunk_rows, dialect)
    assert fast.fallback is None and strict.error is None
    assert _values(strict) == [[v or None for v in row] for row in rows]


# --- each difference between the parsers, and the checks on the bytes -------------------------------


@pytest.mark.parametrize(
    ("data", "message", "reason"),
    [
        (b'"ab"c,d\n', "',' expected after '\"'", "text after a closing quote"),
        (b'1,"2" \n', "',' expected after '\"'", "text after a closing quote"),
        (b'1,"a"b"c"\n', "',' expected after '\"'", "a quote that does not start a field"),
        (b'""x,1\n', "',' expected after '\"'", "text after a closing quote"),
        (b'3,"4', "unexpected end of data", "a quoted field is not closed"),
        (b'1,"2\r', "unexpected end of data", "a quoted field is not closed"),
        (b'1,"2"" \n3,4', "unexpected end of data", "a quoted field is not closed"),
    ],
)
def test_quoting_arrow_would_accept_is_refused_as_before(
    tmp_path: Path, data: bytes, message: str, reason: str
) -> None:
    strict, fast = _same(_write(tmp_path, "q.csv", b"a,b\n0,0\n" + data))
    assert strict.error is not None and message in strict.error and "malformed CSV near line" in strict.error
    assert fast.fallback is not None and fast.fallback.startswith(reason)


def test_a_quote_inside_an_unquoted_field_is_literal_on_both_paths(tmp_path: Path) -> None:
    strict, fast = _same(_write(tmp_path, "l.csv", b'a,b\nab"c,d""e\nx,y\n'))
    assert _values(strict) == [['ab"c', 'd""e'], ["x", "y"]]
    assert fast.fallback == "a quote that does not start a field"


def test_a_space_before_a_quote_leaves_it_literal_and_splits_the_field(tmp_path: Path) -> None:
    strict, _ = _same(_write(tmp_path, "s.csv", b'a,b\n "x,y",z\n'))
    assert strict.error is not None and "line 2 has 3 fields but the header has 2" in strict.error


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_and_blank_lines_are_read_by_the_fast_path(tmp_path: Path, end: bytes) -> None:
    body = end.join([b"a,b", b"1,2", b"", b"3,4", b"", b""]) + b"\n\r5,6" + end
    strict, fast = _same(_write(tmp_path, "e.csv", body), chunk_rows=2)
    assert _values(strict) == [["1", "2"], ["3", "4"], ["5", "6"]] and fast.fallback is None
    assert [first for first, _ in fast.chunks] == [1, 3]


def test_line_breaks_inside_quotes_are_kept_by_the_fast_path(tmp_path: Path) -> None:
    data = b'a,b\n"x\ry","p\r\nq"\r"",""\n"1,""2""\n3",4'
    strict, fast = _same(_write(tmp_path, "n.csv", data))
    assert _values(strict) == [["x\ry", "p\r\nq"], [None, None], ['1,"2"\n3', "4"]]
    assert fast.fallback is None


def test_only_the_leading_bom_is_dropped(tmp_path: Path) -> None:
    bom = _BOM
    strict, fast = _same(_write(tmp_path, "b1.csv", bom + b'"a",b\n1,2\n'))
    assert strict.chunks[0][1].columns.tolist() == ["a", "b"] and fast.fallback is None
    strict, fast = _same(_write(tmp_path, "b2.csv", bom + bom + b"a,b\n1,2\n"))
    assert strict.chunks[0][1].columns.tolist() == ["\ufeffa", "b"]
    assert fast.fallback == "a byte-order mark at the start of a row"
    with _blocks_of(4):  # the second data row starts a piece of its own
        strict, fast = _same(_write(tmp_path, "b3.csv", b"a,b\n1,2\n" + bom + b"3,4\n"))
    assert _values(strict) == [["1", "2"], ["\ufeff3", "4"]]
    assert fast.fallback == "a byte-order mark at the start of a row"


def test_a_field_over_the_csv_field_size_limit_is_refused_as_before(tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    multibyte = _write(tmp_path, "m.csv", ("a,b\n1," + "é" * 6 + "\n").encode())  # 12 bytes, 6 chars
    long = _write(tmp_path, "l.csv", b"a,b\n0,0\n1," + b"x" * 7 + b"\n")
    try:
        csv.field_size_limit(6)
        strict, fast = _same(multibyte)
        assert strict.error is None and fast.fallback is None
        strict, fast = _same(long)
    finally:
        csv.field_size_limit(limit)
    assert strict.error is not None and "field larger than field limit (6)" in strict.error
    assert fast.fallback == "a field longer than csv.field_size_limit() (6)"


def test_a_ragged_row_deep_in_the_file_keeps_its_line_and_the_chunks_before_it(tmp_path: Path) -> None:
    rows = [b"%d,x" % i for i in range(5000)]
    rows[4321] = b"4321,x,extra"
    strict, fast = _same(_write(tmp_path, "r.csv", b"id,v\n" + b"\n".join(rows) + b"\n"), chunk_rows=100)
    assert strict.error is not None and "line 4323 has 3 fields but the header has 2" in strict.error
    assert len(fast.chunks) == 43 and fast.fallback is not None and "Expected 2 columns" in fast.fallback


@pytest.mark.parametrize(
    ("bad", "message"),
    [(b"\x00", "NUL byte at offset"), (b"\xc3(", "invalid UTF-8 at byte"), (b"\xe2\x82", "invalid UTF-8")],
)
def test_bytes_the_strict_pass_refuses_are_refused_as_before(
    tmp_path: Path, bad: bytes, message: str
) -> None:
    # Past the first MiB, which the strict pass already checks when the file is opened.
    head = b"a,b\n" + b"".join(b"%d,%s\n" % (i, b"x" * 90) for i in range(12_000))
    for tail in (bad + b",3\n", b"3," + bad):
        with _blocks_of(16 * 1024):
            strict, fast = _same(_write(tmp_path, "bad.csv", head + tail), chunk_rows=1_000)
        assert strict.error is not None and message in strict.error and fast.fallback is not None
        assert len(fast.chunks) >= 10


def test_a_long_line_is_left_to_the_strict_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_input, "MAX_LINE_BYTES", 64)
    strict, fast = _same(_write(tmp_path, "long.csv", b"a,b\n1," + b"x" * 100 + b"\n2,3\n"))
    assert strict.error is None and fast.fallback == "a line too long for the strict reader"


def test_a_row_longer_than_the_carry_is_left_to_the_strict_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_reader, "_MAX_CARRY", 100)
    field = b'"' + b"line\n" * 40 + b'"'
    with _blocks_of(16):
        strict, fast = _same(_write(tmp_path, "carry.csv", b"a,b\n1," + field + b"\n2,3\n"))
    assert len(_values(strict)) == 2 and fast.fallback == "a row of more than 100 bytes"


def test_a_non_ascii_delimiter_is_read_by_the_strict_pass(tmp_path: Path) -> None:
    dialect = CsvDialect(delimiter="§")
    strict, fast = _same(_write(tmp_path, "d.csv", "a§b\n1§2\n".encode()), dialect=dialect)
    assert _values(strict) == [["1", "2"]] and fast.fallback == "the delimiter '§' is not ASCII"


def test_compressed_inputs_take_the_fast_path(tmp_path: Path) -> None:
    data = b"a,b\n" + b"".join(b'%d,"v,%d"\n' % (i, i) for i in range(1000))
    plain = _write(tmp_path, "p.csv", data)
    gz = _write(tmp_path, "p.csv.gz", gzip.compress(data))
    zipped = tmp_path / "p.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inner.csv", data)
    for path in (plain, gz, zipped):
        strict, fast = _same(path, chunk_rows=300)
        assert len(strict.chunks) == 4 and fast.fallback is None


def test_a_cap_hit_while_streaming_is_refused_as_before(tmp_path: Path) -> None:
    rows = b"".join(b"%d,%d\n" % (i, i * 7919 % 100_003) for i in range(200_000))  # 2.6 MB
    gz = _write(tmp_path, "big.csv.gz", gzip.compress(b"a,b\n" + rows))
    strict, fast = _same(gz, chunk_rows=10_000, max_uncompressed_bytes=2_000_000)
    assert strict.error is not None and "ReadLimits.max_uncompressed_bytes" in strict.error
    assert fast.fallback is not None and fast.fallback.startswith("reading the input failed")
    strict, fast = _same(gz, chunk_rows=10_000, max_rows=55_000)
    assert strict.error is not None and "the cap (ReadLimits.max_rows)" in strict.error
    assert len(fast.chunks) == 5 and fast.fallback is None


def test_a_pass_stopped_early_leaves_the_source_readable(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", b"a\n" + b"".join(b"%d\n" % i for i in range(100)))
    with open_table(path, limits=ReadLimits(chunk_rows=10)) as source:
        chunks = source.chunks()
        assert next(chunks).first_row_number == 1
        chunks.close()
        assert sum(c.row_count for c in source.chunks()) == 100 and source.csv_fallback is None


def test_an_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="csv_engine must be 'arrow' or 'python'"):
        open_table(_write(tmp_path, "t.csv", b"a\n1\n"), csv_engine="duckdb")  # type: ignore[arg-type]


def test_quoted_line_breaks_across_full_size_blocks_need_no_fallback(tmp_path: Path) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["id", "text", "note"])
    for i in range(40_000):
        writer.writerow([i, f'say "hi",\r\n{i}\nbye {"x" * (i % 90)}' if i % 3 else "", "é" * (i % 5)])
    path = _write(tmp_path, "multi.csv", buffer.getvalue().encode())
    assert path.stat().st_size > 2 * csv_reader.ARROW_BLOCK
    strict, fast = _same(path, chunk_rows=7_000)
    assert fast.fallback is None and len(fast.chunks) == 6
    assert _values(strict)[4] == ["4", 'say "hi",\r\n4\nbye xxxx', "éééé"]


def test_a_header_changed_after_open_is_refused_as_before(tmp_path: Path) -> None:
    path = _write(tmp_path, "h.csv", b"a,b\n1,2\n")
    for engine in ("python", "arrow"):
        path.write_bytes(b"a,b\n1,2\n")
        with open_table(path, csv_engine=engine) as source:  # type: ignore[arg-type]
            with path.open("r+b") as f:  # same inode, same size, another header
                f.write(b"x")
            with pytest.raises(UnreadableFile, match="changed while it was being read"):
                list(source.chunks())
            if engine == "arrow":
                assert source.csv_fallback == "the header differs from the one read at open"
