"""Reading contributed files in bounded chunks: ``open_table(path) -> TableSource``.

``open_table`` opens the file (``archives.open_input``: size cap, digest, gzip/zip), reads just
enough to know its columns and that it has data, and returns a ``TableSource`` whose ``chunks()``
streams ``Chunk(first_row_number, frame)`` of at most ``ReadLimits.chunk_rows`` rows, so memory
stays bounded by one chunk however large the file. Anything it cannot read faithfully is refused
with ``UnreadableFile`` (or ``SchemaMismatch`` for nested Parquet columns) naming the line, row,
column, member or cap, and what to do; it never guesses.

* **CSV** (``CsvDialect``: delimiter, quote character, UTF-8) is decoded incrementally from the
  byte stream and parsed with the ``csv`` module in strict mode. A leading byte-order mark is
  stripped explicitly. Refused: NUL bytes and invalid UTF-8 (naming the byte offset and line), an
  unterminated quote, a header naming a column twice or leaving one unnamed, a row with more or
  fewer fields than the header (naming the line and both counts), a header that parses as one
  column containing ``;``, tab, ``|`` or ``,`` (the wrong delimiter: the message names the likely
  one and how to declare it), an empty file, a header with no data rows. Blank lines are skipped
  and not counted as data rows.
* **JSON Lines** (``.jsonl``/``.ndjson``): one object per line, every line with the same keys (in
  any order; the first line's order is the column order). Values become text like CSV: a string as
  is, a number as its literal text (``1.50`` stays ``1.50``; ``NaN``/``Infinity`` as written, for
  the contract to quarantine), ``true``/``false`` as those words, ``null`` as missing. A nested
  object or array, a repeated key, a line that is not an object, or keys differing from the first
  line's are refused naming the line and key.
* **Parquet**: the footer is read first and the caps on row groups, columns, rows and uncompressed
  bytes are checked before any page; a nested column (list, struct, map, union) raises
  ``SchemaMismatch`` naming it. Rows then stream with ``iter_batches(batch_size=chunk_rows)``, every
  column keeping its Arrow type (``pandas.ArrowDtype``), so null and NaN stay apart. A pandas
  index stored in the file is not a data column and is dropped.

Text frames (``TableSource.typed`` is False) hold, in every column, the text exactly as read in
pandas' ``string`` dtype (``TEXT_DTYPE``); an empty field, absent value or ``null`` is missing
(``pd.NA``, ``None`` once converted to Python objects). Typing the text is the contract engine's
job, so a bad value is quarantined with its row rather than coerced here. Row numbers count data
rows from 1. An error can surface from ``chunks()`` at any row: a consumer treats the submission
as refused whole. ``chunks()`` may be called again for a fresh pass; plain and gzip inputs are
re-hashed on every full pass and refused if they no longer match ``input_digest``.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NoReturn

import pandas as pd

from databright.datasets.archives import Compression, InputFile, Kind, open_input
from databright.datasets.limits import MAX_LINE_BYTES, CsvDialect, MiB, ReadLimits
from databright.errors import SchemaMismatch, UnreadableFile

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TEXT_DTYPE",
    "Chunk",
    "CsvDialect",
    "ReadLimits",
    "TableSource",
    "open_table",
    "read_table",
]

DEFAULT_MAX_BYTES = 256 * MiB  # read_table's cap: it holds the whole file in memory
TEXT_DTYPE = pd.StringDtype("pyarrow", na_value=pd.NA)
_BLOCK = 1 * MiB
_BOM = "\ufeff"
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_MAGIC = {b"\x1f\x8b": ".gz", b"PK\x03\x04": ".zip", b"PAR1": ".parquet"}


@dataclass(frozen=True)
class Chunk:
    """Rows ``first_row_number`` .. ``first_row_number + len(frame) - 1`` (1-based data rows).

    ``input_bytes_read`` is how much of the input had been read when the chunk was made (it
    includes read-ahead), for progress against ``TableSource.input_bytes``.
    """

    first_row_number: int
    frame: pd.DataFrame
    input_bytes_read: int = 0

    @property
    def row_count(self) -> int:
        return len(self.frame)

    @property
    def last_row_number(self) -> int:
        return self.first_row_number + len(self.frame) - 1


# --- text: bytes → lines ----------------------------------------------------------------------


def _decoded_blocks(stream: IO[bytes], name: str, line_ends: str) -> Iterator[str]:
    """UTF-8 text from ``stream`` in blocks that each end at a line end (the last may not)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = newlines = 0  # bytes and b"\n" before this block, for messages
    carry = ""  # text after the last line end, completed by the next block
    first = True  # no text yet: a BOM may still come
    while True:
        block = stream.read(_BLOCK)
        final = not block
        if offset == 0:
            for magic, suffix in _MAGIC.items():
                # A header may well start with "PAR1"; a Parquet file also holds NUL bytes.
                if block.startswith(magic) and (suffix != ".parquet" or b"\x00" in block):
                    raise UnreadableFile(
                        f"{name} starts like a {suffix} file, not text; name it with its real suffix "
                        f"(e.g. data.csv{suffix} or data{suffix}) and submit it again",
                        file=name,
                    )
        nul = block.find(b"\x00")
        if nul >= 0:
            line = newlines + block.count(b"\n", 0, nul) + 1
            raise UnreadableFile(
                f"{name}: NUL byte at offset {offset + nul} (line {line}); this is not a text file — "
                "export it again as UTF-8 text",
                file=name,
                offset=offset + nul,
                line=line,
            )
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(block, final)
        except UnicodeDecodeError as exc:
            at = offset - pending + exc.start
            line = newlines + block.count(b"\n", 0, max(0, exc.start - pending)) + 1
            bad = bytes(exc.object[exc.start : exc.start + 4])
            raise UnreadableFile(
                f"{name}: invalid UTF-8 at byte {at} (line {line}): {bad!r}; re-encode the file as UTF-8",
                file=name,
                offset=at,
                line=line,
            ) from exc
        offset += len(block)
        newlines += block.count(b"\n")
        if first and text:
            first = False
            if text.startswith(_BOM):
                text = text[len(_BOM) :]
        text = carry + text if carry else text
        if final:
            if text:
                yield text
            return
        cut = max(text.rfind(end, 0, len(text) - 1 if end == "\r" else len(text)) for end in line_ends)
        if cut < 0:
            carry = text
            if len(carry) > MAX_LINE_BYTES:
                raise UnreadableFile(
                    f"{name}: line {newlines + 1} is longer than {MAX_LINE_BYTES:,} characters; "
                    "this is not a line-oriented text file — check the format and the line endings",
                    file=name,
                    line=newlines + 1,
                )
            continue
        carry = text[cut + 1 :]
        yield text[: cut + 1]


def _check_header(header: list[str], name: str, what: str, limits: ReadLimits) -> tuple[str, ...]:
    if len(header) > limits.max_columns:
        raise UnreadableFile(
            f"{name}: the {what} names {len(header):,} columns, over the cap of {limits.max_columns:,} "
            "(ReadLimits.max_columns); split the columns or raise the cap",
            file=name,
            limit="max_columns",
        )
    unnamed = [i + 1 for i, h in enumerate(header) if h == ""]
    if unnamed:
        raise UnreadableFile(
            f"{name}: column {unnamed[0]} of the {what} has no name; name every column "
            "(a trailing delimiter leaves an unnamed last column)",
            file=name,
            column=unnamed[0],
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise UnreadableFile(
            f"{name}: the {what} names {repeated} more than once; give each column one name",
            file=name,
            columns=repeated,
        )
    return tuple(header)


# --- CSV --------------------------------------------------------------------------------------


class _Ragged(Exception):
    """A batch held a row of the wrong width; the slow pass finds its line (error path only)."""


def _malformed(name: str, line: int, dialect: CsvDialect, exc: csv.Error) -> UnreadableFile:
    return UnreadableFile(
        f"{name}: malformed CSV near line {line}: {exc}; check the quoting (a field containing the "
        f"delimiter, a quote or a line break must be quoted with {dialect.quotechar}, a quote inside "
        "doubled)",
        file=name,
        line=line,
    )


class _CsvPass:
    """One pass over a CSV: the header is read and checked on construction."""

    def __init__(self, stream: IO[bytes], name: str, dialect: CsvDialect, limits: ReadLimits) -> None:
        self.name = name
        self.dialect = dialect
        blocks = _decoded_blocks(stream, name, "\n\r")
        lines = itertools.chain.from_iterable(io.StringIO(b, newline="") for b in blocks)
        self.reader = csv.reader(lines, delimiter=dialect.delimiter, quotechar=dialect.quotechar, strict=True)
        try:
            header = next(self.reader, None)
            while header == []:
                header = next(self.reader, None)
        except csv.Error as exc:
            raise _malformed(name, self.reader.line_num, dialect, exc) from exc
        if header is None:
            raise UnreadableFile(
                f"{name}: the file is empty; a CSV needs a header row naming the columns", file=name
            )
        if len(header) == 1:
            _refuse_wrong_delimiter(header[0], name, dialect)
        self.columns = _check_header(header, name, "header", limits)

    def batches(self, size: int) -> Iterator[list[list[str]]]:
        """Lists of up to ``size`` data rows, pulled from the C parser without a Python step per row."""
        width = len(self.columns)
        while True:
            batch: list[list[str]] = []
            while len(batch) < size:
                try:
                    part = list(itertools.islice(self.reader, size - len(batch)))
                except csv.Error as exc:
                    raise _malformed(self.name, self.reader.line_num, self.dialect, exc) from exc
                if not part:
                    break
                widths = set(map(len, part))
                if widths != {width}:
                    if widths - {0, width}:
                        raise _Ragged
                    part = [row for row in part if row]  # blank lines are not data rows
                batch.extend(part)
            if not batch:
                return
            yield batch

    def rows(self) -> Iterator[list[str]]:
        """Row by row, naming the line of the first row whose width differs from the header's."""
        width = len(self.columns)
        try:
            for row in self.reader:
                if len(row) != width and row:
                    raise UnreadableFile(
                        f"{self.name}: line {self.reader.line_num} has {len(row)} fields but the header has "
                        f"{width} ({', '.join(self.columns)}); fix the row's delimiters or quoting",
                        file=self.name,
                        line=self.reader.line_num,
                        fields=len(row),
                        expected=width,
                    )
                if row:
                    yield row
        except csv.Error as exc:
            raise _malformed(self.name, self.reader.line_num, self.dialect, exc) from exc


def _refuse_wrong_delimiter(only: str, name: str, dialect: CsvDialect) -> None:
    for candidate, word in _DELIMITERS.items():
        if candidate != dialect.delimiter and candidate in only:
            raise UnreadableFile(
                f"{name}: the header parses as one column {only[:80]!r} that contains {candidate!r}; the "
                f"file looks {word}-separated, not {dialect.delimiter!r}-separated — declare the delimiter "
                f"(CsvDialect(delimiter={candidate!r}), or --delimiter {candidate!r} on the command line)",
                file=name,
                likely_delimiter=candidate,
            )


# --- JSON Lines -------------------------------------------------------------------------------


class _RepeatedKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def _json_text(value: Any, name: str, line: int, key: str) -> str | None:
    if value is None or isinstance(value, str):
        return value  # numbers arrive as their literal text (parse_int/parse_float/parse_constant)
    if value is True or value is False:
        return "true" if value else "false"
    shape = "object" if isinstance(value, dict) else "array"
    raise UnreadableFile(
        f"{name}: line {line}, key {key!r} holds a nested {shape}; DataBright reads flat records — "
        "give each value its own key, or encode it as a string",
        file=name,
        line=line,
        column=key,
    )


class _JsonlPass:
    """One pass over JSON Lines: the first object (its keys are the columns) is read on construction."""

    def __init__(self, stream: IO[bytes], name: str, limits: ReadLimits) -> None:
        self.name = name
        self.limits = limits
        self._objects = self._parse(_decoded_blocks(stream, name, "\n"))
        first = next(self._objects, None)
        if first is None:
            raise UnreadableFile(f"{name}: the file is empty; write one JSON object per line", file=name)
        line, obj = first
        self.columns = _check_header(list(obj), name, f"object on line {line}", limits)
        self._first = self._values(line, obj)

    def _parse(self, blocks: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        name = self.name
        line = 0
        for block in blocks:
            for text in block.split("\n"):
                line += 1
                if not text.strip():
                    continue
                try:
                    obj = json.loads(
                        text, parse_float=str, parse_int=str, parse_constant=str, object_pairs_hook=_pairs
                    )
                except _RepeatedKey as exc:
                    raise UnreadableFile(
                        f"{name}: line {line} repeats the key {exc.args[0]!r}; give each key once",
                        file=name,
                        line=line,
                    ) from exc
                except json.JSONDecodeError as exc:
                    raise UnreadableFile(
                        f"{name}: line {line} is not valid JSON ({exc.msg} at column {exc.colno}); "
                        "write one JSON object per line",
                        file=name,
                        line=line,
                    ) from exc
                if not isinstance(obj, dict):
                    raise UnreadableFile(
                        f"{name}: line {line} is a JSON {type(obj).__name__}, not an object; "
                        "JSON Lines needs one object per line",
                        file=name,
                        line=line,
                    )
                yield line, obj
            line -= 1  # a block ends with "\n": its last, empty piece is not a line of its own

    def _values(self, line: int, obj: dict[str, Any]) -> list[str | None]:
        if len(obj) != len(self.columns) or any(key not in obj for key in self.columns):
            missing = sorted(set(self.columns) - obj.keys())
            extra = sorted(obj.keys() - set(self.columns))
            raise UnreadableFile(
                f"{self.name}: line {line} has different keys from the first object (missing {missing}, "
                f"extra {extra}); give every line the same keys, with null for a missing value",
                file=self.name,
                line=line,
            )
        return [_json_text(obj[key], self.name, line, key) for key in self.columns]

    def batches(self, size: int) -> Iterator[list[list[str | None]]]:
        rows = itertools.chain([self._first], itertools.starmap(self._values, self._objects))
        while batch := list(itertools.islice(rows, size)):
            yield batch


def _text_frame(rows: list[list[Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    """Rows of text (or None) as string columns, with an empty string made missing."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    # One Arrow array over all cells, then a strided take per column: far cheaper than building
    # each column from Python objects.
    width = len(columns)
    cells = pa.array(list(itertools.chain.from_iterable(rows)), type=pa.string())
    cells = pc.if_else(pc.equal(cells, ""), pa.scalar(None, pa.string()), cells)
    data = {}
    for i, column in enumerate(columns):
        arr = cells.take(pa.array(np.arange(i, len(cells), width, dtype=np.int64)))
        data[column] = pd.Series(pd.arrays.ArrowStringArray(arr), copy=False)
    return pd.DataFrame(data, columns=list(columns))


# --- Parquet ----------------------------------------------------------------------------------


def _open_parquet(source: IO[bytes], name: str, limits: ReadLimits) -> tuple[pq.ParquetFile, tuple[str, ...]]:
    """Open the footer and check every cap on it before a page is read; return the data columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source)
        meta = parquet.metadata
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(
            f"{name} is not a readable Parquet file (its footer is missing or corrupt: {exc}); "
            "write it again with pyarrow or pandas",
            file=name,
        ) from exc
    index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    fields = [f for f in schema if f.name not in index]
    caps = (
        ("row groups", meta.num_row_groups, limits.max_row_groups, "max_row_groups"),
        ("columns", len(fields), limits.max_columns, "max_columns"),
        ("rows", meta.num_rows, limits.max_rows, "max_rows"),
        (
            "uncompressed bytes",
            sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
            limits.max_uncompressed_bytes,
            "max_uncompressed_bytes",
        ),
    )
    for what, value, cap, field in caps:
        if value > cap:
            raise UnreadableFile(
                f"{name} has {value:,} {what}, over the cap of {cap:,} (ReadLimits.{field}); "
                "split the file or raise the cap",
                file=name,
                limit=field,
            )
    for f in fields:
        if pa.types.is_nested(f.type):
            raise SchemaMismatch(
                f"{name}: column {f.name!r} has the nested type {f.type}; DataBright reads flat columns "
                "only — flatten it into one column per value, or encode it as a string",
                file=name,
                column=f.name,
            )
    columns = _check_header([f.name for f in fields], name, "schema", limits)
    return parquet, columns


def _parquet_frame(batch: pa.RecordBatch | pa.Table) -> pd.DataFrame:
    # Without the schema's pandas metadata the frame gets a plain RangeIndex and Arrow types only.
    return batch.replace_schema_metadata(None).to_pandas(types_mapper=pd.ArrowDtype)


# --- the source -------------------------------------------------------------------------------


class TableSource:
    """An open, checked file ready to stream, made by ``open_table``; a context manager.

    Attributes: ``kind`` (``"csv"``, ``"parquet"`` or ``"jsonl"``), ``compression`` (``None``,
    ``"gzip"`` or ``"zip"``), ``member`` (the zip member's name), ``display_name`` and ``name``
    (for messages only), ``columns`` (header order), ``typed`` (True for Parquet only),
    ``arrow_schema`` (Parquet), ``input_digest`` (hex sha256 of the bytes received),
    ``input_bytes`` (their count), ``has_rows``, ``limits`` and ``dialect``.
    """

    def __init__(
        self,
        source: InputFile,
        display_name: str,
        limits: ReadLimits,
        dialect: CsvDialect,
    ) -> None:
        self._input = source
        self.display_name = display_name
        self.limits = limits
        self.dialect = dialect
        self.kind: Kind = source.layout.kind
        self.compression: Compression | None = source.layout.compression
        self.member = source.layout.member
        self.input_digest = source.digest
        self.input_bytes = source.size
        self.typed = self.kind == "parquet"
        self.arrow_schema: pa.Schema | None = None
        self.columns: tuple[str, ...]
        self._parquet: pq.ParquetFile | None = None
        self._spool: IO[bytes] | None = None
        self._closed = False
        if self.kind == "parquet":
            self._spool, self._spool_view = source.seekable()
            try:
                self._parquet, self.columns = _open_parquet(self._spool, self.name, limits)
            except BaseException:
                self._spool.close()
                raise
            self.arrow_schema = self._parquet.schema_arrow
            has_rows = self._parquet.metadata.num_rows > 0
        else:
            stream, _ = source.stream()
            with stream:
                probe = self._text_reader(stream)
                self.columns = probe.columns
                try:
                    has_rows = next(probe.batches(1), None) is not None
                except _Ragged:
                    self._refuse_ragged()
        self.has_rows = has_rows

    @property
    def name(self) -> str:
        """The display name, with the zip member when there is one: how messages refer to the input."""
        return self.display_name if self.member is None else f"{self.display_name}: member {self.member!r}"

    def _text_reader(self, stream: IO[bytes]) -> _CsvPass | _JsonlPass:
        if self.kind == "csv":
            return _CsvPass(stream, self.name, self.dialect, self.limits)
        return _JsonlPass(stream, self.name, self.limits)

    def _changed(self) -> UnreadableFile:
        return UnreadableFile(
            f"{self.name} changed while it was being read; submit it again once nothing is writing it",
            file=self.name,
        )

    def _refuse_ragged(self) -> NoReturn:
        """Re-read row by row to name the first ragged row's line (the fast pass cannot know it)."""
        stream, _ = self._input.stream()
        with stream:
            reader = self._text_reader(stream)
            if isinstance(reader, _CsvPass):
                for _ in reader.rows():
                    pass
        raise self._changed()

    def chunks(self) -> Iterator[Chunk]:
        """Stream the rows as ``Chunk``s of at most ``limits.chunk_rows`` rows; a fresh pass each call."""
        if self._closed:
            raise UnreadableFile(f"{self.name} was closed; open it again with open_table", file=self.name)
        if self._parquet is not None:
            yield from self._parquet_chunks(self._parquet)
            return
        stream, raw = self._input.stream()
        with stream:
            reader = self._text_reader(stream)
            if reader.columns != self.columns:
                raise self._changed()
            first = 1
            batches: Iterator[list[list[Any]]] = reader.batches(self.limits.chunk_rows)
            while True:
                try:
                    batch = next(batches, None)
                except _Ragged:
                    self._refuse_ragged()
                if batch is None:
                    break
                self._check_rows(first + len(batch) - 1)
                yield Chunk(first, _text_frame(batch, self.columns), raw.bytes_read)
                first += len(batch)
        raw.verify_whole()

    def _parquet_chunks(self, parquet: pq.ParquetFile) -> Iterator[Chunk]:
        import pyarrow as pa

        first = 1
        arrow_bytes = 0
        batches = parquet.iter_batches(batch_size=self.limits.chunk_rows, columns=list(self.columns))
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                raise UnreadableFile(
                    f"{self.name}: the data after row {first - 1:,} cannot be read ({exc}); "
                    "the file is corrupt — write it again with pyarrow or pandas",
                    file=self.name,
                    row=first,
                ) from exc
            if batch is None:
                return
            arrow_bytes += batch.nbytes
            if arrow_bytes > self.limits.max_uncompressed_bytes:
                raise UnreadableFile(
                    f"{self.name}: rows up to {first + batch.num_rows - 1:,} already take {arrow_bytes:,} "
                    f"bytes in memory, over the cap of {self.limits.max_uncompressed_bytes:,} "
                    "(ReadLimits.max_uncompressed_bytes); split the file or raise the cap",
                    file=self.name,
                    limit="max_uncompressed_bytes",
                )
            self._check_rows(first + batch.num_rows - 1)
            yield Chunk(first, _parquet_frame(batch), self._spool_view.bytes_read)
            first += batch.num_rows

    def _check_rows(self, last_row: int) -> None:
        if last_row > self.limits.max_rows:
            raise UnreadableFile(
                f"{self.name} has more than {self.limits.max_rows:,} data rows, the cap "
                "(ReadLimits.max_rows); split it into smaller files or raise the cap",
                file=self.name,
                limit="max_rows",
                row=self.limits.max_rows + 1,
            )

    def to_dict(self) -> dict[str, Any]:
        """What was opened, for reports and artifacts (the display name is metadata only)."""
        return {
            "display_name": self.display_name,
            "kind": self.kind,
            "compression": self.compression,
            "member": self.member,
            "columns": list(self.columns),
            "typed": self.typed,
            "input_digest": self.input_digest,
            "input_bytes": self.input_bytes,
            "dialect": self.dialect.to_dict() if self.kind == "csv" else None,
            "limits": self.limits.to_dict(),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._spool is not None:
            self._spool.close()
        self._input.close()

    def __enter__(self) -> TableSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TableSource({self.display_name!r}, kind={self.kind!r}, compression={self.compression!r}, "
            f"columns={len(self.columns)}, digest={self.input_digest[:12]})"
        )


def _open(
    path: Path, limits: ReadLimits, dialect: CsvDialect, display_name: str | None, require_rows: bool
) -> TableSource:
    path = Path(path)
    name = display_name if display_name is not None else path.name
    source = open_input(path, limits, name)
    try:
        table = TableSource(source, name, limits, dialect)
    except BaseException:
        source.close()
        raise
    if require_rows and not table.has_rows:
        table.close()
        raise UnreadableFile(
            f"{table.name} has a header but no data rows; add the rows, or do not submit the file",
            file=table.name,
        )
    return table


def open_table(
    path: Path,
    *,
    limits: ReadLimits = ReadLimits(),  # noqa: B008 - frozen, so one shared default is safe
    dialect: CsvDialect = CsvDialect(),  # noqa: B008
    display_name: str | None = None,
) -> TableSource:
    """Open ``path`` for streaming; see the module docstring for what is read and what is refused.

    ``display_name`` (default: the path's name) only labels messages and reports; it is never used
    to build a path or a storage key. A symlink given as ``path`` is followed: it is only read.
    """
    return _open(path, limits, dialect, display_name, require_rows=True)


def read_table(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """The whole file as one frame (in memory; prefer ``open_table`` for large files).

    Kept for its callers: CSV and JSON Lines values are the strings as read, with ``""`` for an
    empty or absent value; Parquet keeps Arrow types; a file with a header and no rows gives an
    empty frame with its columns.
    """
    with _open(path, ReadLimits(max_bytes=max_bytes), CsvDialect(), None, require_rows=False) as source:
        frames = [chunk.frame for chunk in source.chunks()]
        if not frames and source.arrow_schema is not None:
            frames = [_parquet_frame(source.arrow_schema.empty_table().select(list(source.columns)))]
        typed = source.typed
        columns = list(source.columns)
    if not frames:
        frames = [_text_frame([], tuple(columns))]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if not typed:
        frame = frame.fillna("").astype(str)
    return frame
