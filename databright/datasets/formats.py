"""Reading contributed files: CSV as text, Parquet as typed Arrow columns.

``read_table`` turns a file into a ``pandas.DataFrame`` and refuses, whole, anything it cannot read
faithfully — it never guesses:

* **CSV** must be UTF-8 with a header row. A UTF-8 byte-order mark is stripped explicitly; NUL
  bytes, invalid UTF-8, an unterminated quote, a repeated header name or a row with more or fewer
  fields than the header raise ``UnreadableFile`` naming the line. Every value is kept as the
  string that was in the file (``""`` for an empty field); parsing to the contract's dtypes is the
  contract engine's job, so a bad value is quarantined with its row rather than coerced. Blank
  lines are skipped and are not counted as data rows.
* **Parquet** is read with pyarrow and every column keeps its Arrow type
  (``pandas.ArrowDtype``), so the contract engine can refuse a retyped column and tell a null
  from a NaN.

A size cap (``max_bytes``) bounds what one submission may hand the exchange.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from databright.errors import UnreadableFile

SUFFIXES = (".csv", ".parquet")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_BOM = "\ufeff"


def _check_size(path: Path, max_bytes: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise UnreadableFile(f"{path} does not exist; check the path", path=str(path)) from exc
    if not path.is_file():
        raise UnreadableFile(f"{path} is not a regular file; pass a .csv or .parquet file", path=str(path))
    if size > max_bytes:
        raise UnreadableFile(
            f"{path.name} is {size:,} bytes, over the submission cap of {max_bytes:,} bytes; "
            "split it into smaller files and submit each",
            path=str(path),
            size=size,
        )
    return size


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_csv_text(data: bytes, name: str = "<csv>") -> pd.DataFrame:
    """Parse UTF-8 CSV bytes into a frame of strings, refusing anything ragged or undecodable."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UnreadableFile(
            f"{name}: NUL byte at offset {nul} (line {_line_of(data, nul)}); this is not a text CSV — "
            "export it again as UTF-8 CSV",
            offset=nul,
        )
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"{name}: invalid UTF-8 at byte {exc.start} (line {_line_of(data, exc.start)}): "
            f"{data[exc.start : exc.start + 4]!r}; re-encode the file as UTF-8",
            offset=exc.start,
        ) from exc
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        while header == []:
            header = next(reader, None)
        if header is None:
            raise UnreadableFile(f"{name}: the file is empty; a CSV needs a header row naming the columns")
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise UnreadableFile(
                f"{name}: the header names {repeated} more than once; give each column one name",
                columns=repeated,
            )
        width = len(header)
        rows: list[list[str]] = []
        for row in reader:
            if len(row) != width:
                if not row:
                    continue
                raise UnreadableFile(
                    f"{name}: line {reader.line_num} has {len(row)} fields but the header has {width} "
                    f"({', '.join(header)}); fix the row's separators or quoting",
                    line=reader.line_num,
                )
            rows.append(row)
    except csv.Error as exc:
        raise UnreadableFile(
            f"{name}: malformed CSV near line {reader.line_num}: {exc}; check the quoting",
            line=reader.line_num,
        ) from exc
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    return pd.DataFrame(
        {col: pd.Series(list(values), dtype=str) for col, values in zip(header, columns, strict=True)},
        columns=header,
    )


def read_parquet_typed(path: Path) -> pd.DataFrame:
    """Read a Parquet file keeping each column's Arrow type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(
            f"{path.name} is not a readable Parquet file: {exc}; write it again with pyarrow or pandas",
            path=str(path),
        ) from exc
    names = table.column_names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UnreadableFile(
            f"{path.name}: columns {repeated} appear more than once; give each column one name",
            path=str(path),
        )
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    return frame.reset_index(drop=True)


def read_table(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """Read a ``.csv`` (strings as written) or ``.parquet`` (typed) file of at most ``max_bytes``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UnreadableFile(
            f"{path.name}: unknown file type {suffix or '(no suffix)'!r}; submit a .csv or .parquet file",
            path=str(path),
        )
    _check_size(path, max_bytes)
    if suffix == ".csv":
        return read_csv_text(path.read_bytes(), name=path.name)
    return read_parquet_typed(path)
