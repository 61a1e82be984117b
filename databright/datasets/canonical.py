"""The canonical row encoding and record ids.

A record is identified by what it says, not by who sent it or where it sits in a file, so two
contributors who submit the same row produce the same ``record_id`` and the second is refused as
a duplicate. The encoding is fixed; changing it would change every id in the registry.

**Canonical row bytes** are the concatenation, **in schema column order**, of one *cell* per
column. Column names are not part of the bytes (their order is fixed by the contract), and neither
is the owner. A cell is a one-byte type tag followed by the value normalised by the column's dtype:

=========  ====  =======================================================================
value      tag   payload after the tag
=========  ====  =======================================================================
null       0x00  nothing
int        0x01  the value as 8 bytes, big-endian two's complement (int64)
float      0x02  IEEE-754 binary64, 8 bytes big-endian
string     0x03  the UTF-8 byte length as 8 bytes big-endian unsigned, then the UTF-8 bytes
=========  ====  =======================================================================

Normalisation, per column dtype:

* ``int``: a Python or numpy integer within int64 (``bool`` refused, as is a value outside
  ``[-2**63, 2**63 - 1]``);
* ``float``: any real number (ints are widened to binary64 exactly as ``float(v)`` rounds them);
  ``-0.0`` becomes ``0.0``; NaN and ±Inf are refused (a float must be finite);
* ``string``: the Unicode NFC normal form of the text (composed and decomposed accents agree),
  encoded as UTF-8; text that cannot be UTF-8 (a lone surrogate) is refused.

The bytes are injective: the schema fixes the number of cells and each tag fixes how many bytes
follow it (nothing, 8, or 8 plus the stated length), so the row can be parsed back cell by cell and
two different normalised rows never share bytes. ``record_id = sha256(canonical row bytes)`` as
lowercase hex.

``record_id(schema, values)`` encodes one row of Python values. ``record_ids(data, schema)`` (hex
strings in a list) and ``record_id_array`` (the same ids as an Arrow string array, for callers that
stay in Arrow or DuckDB) compute them for a whole ``pandas.DataFrame``, ``pyarrow.Table`` or
``RecordBatch``, column-wise and ``BATCH_ROWS`` rows at a time: numpy packs each run of int/float
cells into one byte matrix (closing the gaps nulls leave), each string column becomes an array of
tag-and-length headers beside its UTF-8 text, and one DuckDB query concatenates every row's parts
and hashes them (``sha256`` of a BLOB, on every core). Below ``DUCKDB_MIN_ROWS`` rows Arrow joins
the parts and ``hashlib`` hashes them, as starting a query would cost more than it saves. Both are
SHA-256 of the same bytes, and the tests hold both to ``record_id`` row by row.

In a pandas frame, pandas' missing markers (``None``, ``pd.NA`` and a NaN in a numpy float column)
are null; in Arrow data (and ``pd.ArrowDtype`` columns) only nulls are null and a NaN is refused.
A worker that re-reads the version's Parquet files gets the ids the registry holds by passing
``pq.read_table(...)`` straight to ``record_ids`` (or a frame read with
``to_pandas(types_mapper=pd.ArrowDtype)``; plain ``to_pandas`` turns an int column with nulls into
floats, which an int column refuses).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import numbers
import os
import struct
import threading
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from databright.datasets.contracts import Column, Schema
from databright.errors import DatasetError

if TYPE_CHECKING:
    import duckdb

TAG_NULL = 0x00
TAG_INT = 0x01
TAG_FLOAT = 0x02
TAG_STRING = 0x03
_TAGS = {"int": TAG_INT, "float": TAG_FLOAT, "string": TAG_STRING}
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_CELL = 9  # tag + 8 bytes: every non-null int and float cell, and every string cell's header
# Below this many rows, hashlib in a loop beats the fixed cost of a DuckDB query (~4 ms).
DUCKDB_MIN_ROWS = 8192
# Rows encoded at once: bounds the byte matrix and Arrow temporaries whatever the frame's size.
BATCH_ROWS = 262_144
_NO_SEPARATOR = pa.scalar(b"", pa.large_binary())
_NULL_CELL = pa.scalar(bytes([TAG_NULL]), pa.large_binary())

Data: TypeAlias = pd.DataFrame | pa.Table | pa.RecordBatch


def _bad(col: Column, value: Any, why: str, row: int | None = None) -> DatasetError:
    where = "" if row is None else f" in frame row {row} (0-based)"
    return DatasetError(
        f"column {col.name!r}{where}: {value!r} ({type(value).__name__}) {why}; canonical rows hold "
        f"{col.dtype} values here — validate the rows against the contract first, and read Parquet "
        "with pq.read_table (or to_pandas(types_mapper=pd.ArrowDtype))",
        column=col.name,
        row=row,
    )


# --- one row ------------------------------------------------------------------------------------


def normalize_value(col: Column, value: Any, row: int | None = None) -> Any:
    """One value in canonical form for its column's dtype (``None`` for null)."""
    if value is None or value is pd.NA:
        return None
    if col.dtype == "int":
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
            raise _bad(col, value, "is not an integer", row)
        number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            raise _bad(col, value, "is outside the 64-bit integer range [-2**63, 2**63 - 1]", row)
        return number
    if col.dtype == "float":
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise _bad(col, value, "is not a number", row)
        try:
            real = float(value)
        except OverflowError as exc:  # an int beyond binary64's range
            raise _bad(col, value, "is not finite as a 64-bit float", row) from exc
        if not math.isfinite(real):
            raise _bad(col, value, "is not finite", row)
        return real + 0.0  # IEEE: -0.0 + 0.0 == +0.0, every other value is unchanged
    if not isinstance(value, str):
        raise _bad(col, value, "is not a string", row)
    text = unicodedata.normalize("NFC", value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _bad(col, value, f"is not valid Unicode text ({exc.reason})", row) from exc
    return text


def _cell(tag: int, value: Any) -> bytes:
    if value is None:
        return b"\x00"
    if tag == TAG_INT:
        return struct.pack(">Bq", TAG_INT, value)
    if tag == TAG_FLOAT:
        return struct.pack(">Bd", TAG_FLOAT, value)
    data = value.encode("utf-8")
    return struct.pack(">BQ", TAG_STRING, len(data)) + data


def _ordered_values(schema: Schema, values: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
    if isinstance(values, Mapping):
        missing = [n for n in schema.names if n not in values]
        extra = sorted(str(k) for k in values if k not in schema.names)
        if missing or extra:
            raise DatasetError(
                f"row keys do not match the schema (missing {missing}, extra {extra}); give exactly "
                f"the columns {list(schema.names)}",
                missing=missing,
                extra=extra,
            )
        return [values[n] for n in schema.names]
    if isinstance(values, str | bytes) or len(values) != len(schema.columns):
        raise DatasetError(
            f"a row needs {len(schema.columns)} values in the order {list(schema.names)}, got {values!r}"
        )
    return list(values)


def canonical_row_bytes(schema: Schema, values: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """The canonical bytes of one row given as ``{column: value}`` or values in schema order."""
    ordered = _ordered_values(schema, values)
    return b"".join(
        _cell(_TAGS[c.dtype], normalize_value(c, v)) for c, v in zip(schema.columns, ordered, strict=True)
    )


def record_id(schema: Schema, values: Mapping[str, Any] | Sequence[Any]) -> str:
    return hashlib.sha256(canonical_row_bytes(schema, values)).hexdigest()


# --- a batch, column by column -------------------------------------------------------------------


@dataclass(frozen=True)
class _Cells:
    """One column of a batch in canonical form; a null's slot in ``numbers``/``text`` is 0 / ""."""

    tag: int
    missing: np.ndarray  # bool, True where null
    numbers: np.ndarray | None = None  # native int64 or float64, for int and float columns
    text: pa.Array | None = None  # large_string, NFC, for string columns


def _from_python(col: Column, values: list[Any], missing: np.ndarray, start: int) -> _Cells:
    """The generic path: every value checked by ``normalize_value``, exactly as ``record_id`` does."""
    normal = [
        None if m else normalize_value(col, v, start + i)
        for i, (v, m) in enumerate(zip(values, missing, strict=True))
    ]
    missing = np.fromiter((v is None for v in normal), dtype=bool, count=len(normal))
    if col.dtype == "string":
        return _string_cells(pa.array(normal, pa.large_string()))
    kind = np.int64 if col.dtype == "int" else np.float64
    numbers_ = np.array([0 if v is None else v for v in normal], dtype=kind)
    return _Cells(_TAGS[col.dtype], missing, numbers=numbers_)


def _float_cells(col: Column, values: np.ndarray, missing: np.ndarray, start: int) -> _Cells:
    if missing.any():
        values = np.where(missing, 0.0, values)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _bad(col, float(values[i]), "is not finite", start + i)
    return _Cells(TAG_FLOAT, missing, numbers=values + 0.0)  # -0.0 + 0.0 == +0.0


def _int_cells(col: Column, values: np.ndarray, missing: np.ndarray, start: int) -> _Cells:
    if values.dtype == np.uint64:
        big = (values > INT64_MAX) & ~missing
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise _bad(
                col, int(values[i]), "is outside the 64-bit integer range [-2**63, 2**63 - 1]", start + i
            )
    values = values.astype(np.int64, copy=False)
    if missing.any():
        values = np.where(missing, 0, values)
    return _Cells(TAG_INT, missing, numbers=values)


def _string_cells(text: pa.Array) -> _Cells:
    text = text.cast(pa.large_string())
    missing = text.is_null().to_numpy(zero_copy_only=False)
    ascii_ = pc.fill_null(pc.string_is_ascii(text), True).to_numpy(zero_copy_only=False)
    if not ascii_.all():
        # NFC is the identity on ASCII, so only the distinct other values go through Python, and
        # text that is already NFC (most text) is left as it is.
        others = pc.dictionary_encode(text.filter(pa.array(~ascii_)))
        distinct = others.dictionary.to_pylist()
        nfc = [unicodedata.normalize("NFC", v) for v in distinct]
        if nfc != distinct:
            normal = pa.array(nfc, pa.large_string()).take(others.indices)
            text = pc.replace_with_mask(text, pa.array(~ascii_), normal)
    return _Cells(TAG_STRING, missing, text=text)


def _arrow_cells(col: Column, array: pa.Array | pa.ChunkedArray, start: int) -> _Cells:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    missing = array.is_null().to_numpy(zero_copy_only=False)
    if col.dtype == "float" and (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        values = pc.fill_null(array.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        return _float_cells(col, values, missing, start)
    if col.dtype == "int" and pa.types.is_integer(kind):
        values = pc.fill_null(array, 0).to_numpy(zero_copy_only=False)
        return _int_cells(col, values, missing, start)
    if col.dtype == "string" and (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    ):
        return _string_cells(array)
    # Anything else (dictionary-encoded strings, decimals, bools...) is checked value by value.
    return _from_python(col, array.to_pylist(), missing, start)


def _pandas_cells(col: Column, series: pd.Series, start: int) -> _Cells:
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype):
        return _arrow_cells(col, pa.array(series), start)
    missing = series.isna().to_numpy(dtype=bool)
    numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if col.dtype == "float" and numeric and not pd.api.types.is_complex_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=0.0)
        return _float_cells(col, values, missing, start)
    if col.dtype == "int" and pd.api.types.is_integer_dtype(dtype):
        raw = np.uint64 if pd.api.types.is_unsigned_integer_dtype(dtype) else np.int64
        return _int_cells(col, series.to_numpy(dtype=raw, na_value=0), missing, start)
    if (
        col.dtype == "string"
        and pd.api.types.is_string_dtype(dtype)
        and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")
    ):
        try:
            text = pa.array(series, type=pa.large_string(), from_pandas=True)
        except UnicodeEncodeError:
            pass  # a lone surrogate: the generic path names its row
        else:
            return _string_cells(text)
    return _from_python(col, series.tolist(), missing, start)


def _fixed_part(run: list[_Cells], n: int) -> pa.Array:
    """Consecutive int/float columns as one binary array: packed records, gaps closed for nulls."""
    layout = np.dtype(
        [
            field
            for j, cells in enumerate(run)
            for field in ((f"t{j}", "u1"), (f"v{j}", ">i8" if cells.tag == TAG_INT else ">f8"))
        ]
    )
    width = layout.itemsize  # packed: 9 bytes a column
    rows = np.empty(n, dtype=layout)
    nulls = np.zeros(n, dtype=bool)
    for j, cells in enumerate(run):
        rows[f"t{j}"] = np.where(cells.missing, TAG_NULL, cells.tag) if cells.missing.any() else cells.tag
        rows[f"v{j}"] = cells.numbers  # numpy swaps to big-endian while it copies
        nulls |= cells.missing
    matrix = rows.view(np.uint8).reshape(n, width)
    if not nulls.any():
        offsets = np.arange(0, n * width + 1, width, dtype=np.int64)
        data = matrix.reshape(-1)
    else:
        keep = np.ones((n, width), dtype=bool)
        for j, cells in enumerate(run):
            keep[cells.missing, _CELL * j + 1 : _CELL * (j + 1)] = False
        data = matrix[keep]  # row-major, so each row's bytes stay together and in column order
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


@dataclass(frozen=True)
class _Part:
    """A slice of every row's bytes: a run of fixed-width cells, or one string column's cells.

    A string cell is ``head`` (tag and length) then ``text``, or the null tag where ``text`` is null.
    """

    head: pa.Array  # large_binary
    text: pa.Array | None = None  # large_binary UTF-8, for a string column


def _string_part(cells: _Cells, n: int) -> _Part:
    assert cells.text is not None
    lengths = pc.fill_null(pc.binary_length(cells.text), 0).to_numpy(zero_copy_only=False)
    header = np.empty(n, dtype=np.dtype([("t", "u1"), ("len", ">u8")]))
    header["t"] = TAG_STRING
    header["len"] = lengths
    offsets = np.arange(0, n * _CELL + 1, _CELL, dtype=np.int64)
    head = pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(header.view(np.uint8))]
    )
    return _Part(head, cells.text.cast(pa.large_binary()))


def _encode(cells: list[_Cells], n: int) -> list[_Part]:
    """Every row's canonical bytes, as the parts that concatenated row by row make them."""
    parts: list[_Part] = []
    run: list[_Cells] = []
    for c in cells:
        if c.tag == TAG_STRING:
            if run:
                parts.append(_Part(_fixed_part(run, n)))
                run = []
            parts.append(_string_part(c, n))
        else:
            run.append(c)
    if run:
        parts.append(_Part(_fixed_part(run, n)))
    return parts


def _join(parts: list[_Part]) -> pa.Array:
    """The parts concatenated row by row into one ``large_binary`` array (Arrow, ~300 ns a row)."""
    arrays = []
    for part in parts:
        if part.text is None:
            arrays.append(part.head)
        else:
            joined = pc.binary_join_element_wise(part.head, part.text, _NO_SEPARATOR)
            arrays.append(pc.if_else(part.text.is_null(), _NULL_CELL, joined))
    return arrays[0] if len(arrays) == 1 else pc.binary_join_element_wise(*arrays, _NO_SEPARATOR)


def _batches(data: Data, schema: Schema) -> Iterator[list[_Part]]:
    """The canonical bytes of ``data``'s rows in parts, ``BATCH_ROWS`` rows at a time."""
    if isinstance(data, pd.DataFrame):
        names = [str(c) for c in data.columns]
        n = len(data)
    else:
        names = list(data.schema.names)
        n = data.num_rows
    absent = [c for c in schema.names if c not in names]
    if absent:
        raise DatasetError(
            f"frame lacks schema columns {absent}; it has {names} — give a frame with every schema column",
            missing=absent,
        )
    for start in range(0, n, BATCH_ROWS):
        stop = min(n, start + BATCH_ROWS)
        cells = []
        for col in schema.columns:
            if isinstance(data, pd.DataFrame):
                cells.append(_pandas_cells(col, data[col.name].iloc[start:stop], start))
            else:
                cells.append(_arrow_cells(col, data.column(col.name).slice(start, stop - start), start))
        yield _encode(cells, stop - start)


def canonical_bytes_array(data: Data, schema: Schema) -> pa.ChunkedArray:
    """The canonical bytes of every row of ``data`` (``large_binary``), in row order."""
    return pa.chunked_array([_join(parts) for parts in _batches(data, schema)], pa.large_binary())


# --- hashing ---------------------------------------------------------------------------------------

_duckdb_lock = threading.Lock()
_duckdb_base: tuple[int, duckdb.DuckDBPyConnection] | None = None


def _duckdb_cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on this process's in-memory database (connecting costs ~15 ms, a cursor ~1 ms)."""
    import duckdb

    global _duckdb_base
    with _duckdb_lock:
        # A forked child must not reuse its parent's database handle.
        if _duckdb_base is None or _duckdb_base[0] != os.getpid():
            _duckdb_base = (
                os.getpid(),
                duckdb.connect(":memory:", config={"preserve_insertion_order": True}),
            )
        return _duckdb_base[1].cursor()


def _hash_duckdb(parts: list[_Part]) -> pa.ChunkedArray:
    """sha256 of each row in DuckDB, which also concatenates the parts (faster than Arrow's join)."""
    import duckdb

    columns: dict[str, pa.Array] = {}
    terms = []
    for i, part in enumerate(parts):
        columns[f"h{i}"] = part.head
        if part.text is None:
            terms.append(f"h{i}")
        else:
            columns[f"t{i}"] = part.text
            terms.append(f"coalesce(h{i} || t{i}, '\\x{TAG_NULL:02x}'::BLOB)")
    table = pa.table(columns)
    try:
        cursor = _duckdb_cursor()
        try:
            out = cursor.from_arrow(table).select(f"sha256({' || '.join(terms)}) AS id").to_arrow_table()
        finally:
            cursor.close()
    except duckdb.Error as exc:
        raise DatasetError(f"hashing {table.num_rows} canonical rows in DuckDB failed: {exc}") from exc
    return out.column("id").cast(pa.string())


def _hash_hashlib(parts: list[_Part]) -> list[str]:
    encoded = _join(parts)
    offsets = np.frombuffer(
        encoded.buffers()[1], dtype=np.int64, count=len(encoded) + 1, offset=8 * encoded.offset
    ).tolist()
    data = encoded.buffers()[2]
    view = memoryview(b"" if data is None else data)
    sha = hashlib.sha256
    return [sha(view[a:b]).hexdigest() for a, b in itertools.pairwise(offsets)]


def record_id_array(data: Data, schema: Schema) -> pa.ChunkedArray:
    """``record_id`` of every row of ``data`` as Arrow strings, in row order (no Python objects)."""
    chunks: list[pa.Array] = []
    for parts in _batches(data, schema):
        if len(parts[0].head) < DUCKDB_MIN_ROWS:
            chunks.append(pa.array(_hash_hashlib(parts), pa.string()))
        else:
            chunks.extend(_hash_duckdb(parts).chunks)
    return pa.chunked_array(chunks, pa.string())


def record_ids(data: Data, schema: Schema) -> list[str]:
    """``record_id`` of every row of ``data`` (which must hold the schema's columns), in row order.

    ``data`` is a ``pandas.DataFrame``, ``pyarrow.Table`` or ``RecordBatch``; columns beyond the
    schema's are ignored.
    """
    ids: list[str] = []
    for parts in _batches(data, schema):
        if len(parts[0].head) < DUCKDB_MIN_ROWS:
            ids.extend(_hash_hashlib(parts))
        else:
            for chunk in _hash_duckdb(parts).chunks:
                ids.extend(chunk.to_pylist())
    return ids
