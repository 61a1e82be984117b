"""Reading contributed files in bounded chunks: ``open_table(path) -> TableSource``.

``open_table`` opens the file (``archives.open_input``: size cap, digest, gzip/zip), reads just
enough to know its columns and that it has data, and returns a ``TableSource`` whose ``chunks()``
streams ``Chunk(first_row_number, frame)`` of at most ``ReadLimits.chunk_rows`` rows, so memory
stays bounded by one chunk however large the file. Anything it cannot read faithfully is refused
with ``UnreadableFile`` (or ``SchemaMismatch`` for nested Parquet columns) naming the line, row,
column, member or cap, and what to do; it never guesses.

* **CSV** (``CsvDialect``: delimiter, quote character, UTF-8; ``csv_reader``) is decoded
  incrementally from the byte stream and parsed with the ``csv`` module in strict mode. A leading
  byte-order mark is stripped explicitly. Refused: NUL bytes and invalid UTF-8 (naming the byte
  offset and line), an unterminated quote or text after a closing quote, a header naming a column
  twice or leaving one unnamed, a row with more or fewer fields than the header (naming the line
  and both counts), a header that parses as one column containing ``;``, tab, ``|`` or ``,`` (the
  wrong delimiter: the message names the likely one and how to declare it), an empty file, a
  header with no data rows. Blank lines are skipped and not counted as data rows. The header is
  always read that way; the rows are streamed by Arrow (``csv_engine="arrow"``, the default) into
  the very same chunks, falling back to the strict pass from the first chunk not yet handed on
  whenever the two could disagree — so every refusal is the strict pass's (``csv_reader``
  explains the checks). ``csv_engine="python"`` reads with the strict pass only.
* **JSON Lines** (``.jsonl``/``.ndjson``; ``jsonl_reader``): one object per line, every line with
  the same keys (in any order; the first line's order is the column order). Values become text
  like CSV: a string as is, a number as its literal text (``1.50`` stays ``1.50``;
  ``NaN``/``Infinity`` as written, for the contract to quarantine), ``true``/``false`` as those
  words, ``null`` as missing. A nested object or array, a repeated key, a line that is not an
  object, or keys differing from the first line's are refused naming the line and key.
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

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NoReturn

import pandas as pd

from databright.datasets.archives import Compression, InputFile, Kind, open_input
from databright.datasets.csv_reader import (
    CsvEngine,
    CsvFallback,
    CsvPass,
    Ragged,
    arrow_tables,
    arrow_unsupported,
    table_frame,
)
from databright.datasets.jsonl_reader import JsonlPass
from databright.datasets.limits import CsvDialect, MiB, ReadLimits
from databright.datasets.text_input import TEXT_DTYPE, check_header, text_frame
from databright.errors import ConfigError, SchemaMismatch, UnreadableFile

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TEXT_DTYPE",
    "Chunk",
    "CsvDialect",
    "CsvEngine",
    "ReadLimits",
    "TableSource",
    "open_table",
    "read_table",
]

DEFAULT_MAX_BYTES = 256 * MiB  # read_table's cap: it holds the whole file in memory


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
    columns = check_header([f.name for f in fields], name, "schema", limits)
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
    ``input_bytes`` (their count), ``has_rows``, ``limits``, ``dialect`` and ``csv_engine``.
    ``csv_fallback`` says why the last CSV pass left (or never took) the Arrow fast path, or is
    ``None`` when it did not; it changes nothing in what the pass yields.
    """

    def __init__(
        self,
        source: InputFile,
        display_name: str,
        limits: ReadLimits,
        dialect: CsvDialect,
        csv_engine: CsvEngine = "arrow",
    ) -> None:
        self._input = source
        self.display_name = display_name
        self.limits = limits
        self.dialect = dialect
        self.csv_engine: CsvEngine = csv_engine
        self.csv_fallback: str | None = None
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
                except Ragged:
                    self._refuse_ragged()
        self.has_rows = has_rows

    @property
    def name(self) -> str:
        """The display name, with the zip member when there is one: how messages refer to the input."""
        return self.display_name if self.member is None else f"{self.display_name}: member {self.member!r}"

    def _text_reader(self, stream: IO[bytes]) -> CsvPass | JsonlPass:
        if self.kind == "csv":
            return CsvPass(stream, self.name, self.dialect, self.limits)
        return JsonlPass(stream, self.name, self.limits)

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
            if isinstance(reader, CsvPass):
                for _ in reader.rows():
                    pass
        raise self._changed()

    def chunks(self) -> Generator[Chunk, None, None]:
        """Stream the rows as ``Chunk``s of at most ``limits.chunk_rows`` rows; a fresh pass each call."""
        if self._closed:
            raise UnreadableFile(f"{self.name} was closed; open it again with open_table", file=self.name)
        if self._parquet is not None:
            yield from self._parquet_chunks(self._parquet)
        elif self.kind == "csv" and self.csv_engine == "arrow":
            yield from self._arrow_csv_chunks()
        else:
            yield from self._text_chunks()

    def _arrow_csv_chunks(self) -> Iterator[Chunk]:
        """The fast path; from the first chunk it cannot vouch for, the strict pass takes over."""
        self.csv_fallback = arrow_unsupported(self.dialect)
        if self.csv_fallback is not None:
            yield from self._text_chunks()
            return
        first = 1
        handed_on = 0
        stream, raw = self._input.stream()
        with stream:
            tables = arrow_tables(stream, self.dialect, self.columns, self.limits.chunk_rows)
            while True:
                try:
                    table = next(tables, None)
                except CsvFallback as exc:
                    self.csv_fallback = exc.reason
                    break
                if table is None:
                    break
                self._check_rows(first + table.num_rows - 1)
                yield Chunk(first, table_frame(table, self.columns), raw.bytes_read)
                first += table.num_rows
                handed_on += 1
        if self.csv_fallback is None:
            raw.verify_whole()
        else:
            # Chunks are cut at the same rows on both paths: skip the ones already handed on.
            yield from self._text_chunks(skip=handed_on)

    def _text_chunks(self, skip: int = 0) -> Iterator[Chunk]:
        """The strict pass (CSV) or the JSON Lines pass, leaving out the first ``skip`` chunks."""
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
                except Ragged:
                    self._refuse_ragged()
                if batch is None:
                    break
                self._check_rows(first + len(batch) - 1)
                if skip:
                    skip -= 1
                else:
                    yield Chunk(first, text_frame(batch, self.columns), raw.bytes_read)
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
    path: Path,
    limits: ReadLimits,
    dialect: CsvDialect,
    display_name: str | None,
    require_rows: bool,
    csv_engine: CsvEngine = "arrow",
) -> TableSource:
    if csv_engine not in ("arrow", "python"):
        raise ConfigError(
            f"csv_engine must be 'arrow' or 'python', got {csv_engine!r}; pass csv_engine='arrow' (the "
            "default) or 'python' for the strict reference reader",
            field="csv_engine",
            value=csv_engine,
        )
    path = Path(path)
    name = display_name if display_name is not None else path.name
    source = open_input(path, limits, name)
    try:
        table = TableSource(source, name, limits, dialect, csv_engine)
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
    csv_engine: CsvEngine = "arrow",
) -> TableSource:
    """Open ``path`` for streaming; see the module docstring for what is read and what is refused.

    ``display_name`` (default: the path's name) only labels messages and reports; it is never used
    to build a path or a storage key. A symlink given as ``path`` is followed: it is only read.
    ``csv_engine="python"`` reads a CSV's rows with the strict ``csv`` pass only: the same chunks
    and refusals as the default ``"arrow"``, several times slower.
    """
    return _open(path, limits, dialect, display_name, require_rows=True, csv_engine=csv_engine)


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
        frames = [text_frame([], tuple(columns))]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if not typed:
        frame = frame.fillna("").astype(str)
    return frame
