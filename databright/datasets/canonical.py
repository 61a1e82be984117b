"""The canonical row encoding and record ids.

A record is identified by what it says, not by who sent it or where it sits in a file, so two
contributors who submit the same row produce the same ``record_id`` and the second is refused as
a duplicate. The encoding is fixed; changing it would change every id in the registry.

**Canonical row bytes** = ``crypto.canonical_json`` (UTF-8, no whitespace, no NaN/Infinity) of the
JSON array of the row's values **in schema column order**, each value normalised by its column's
dtype:

* ``int`` → JSON integer (Python ``int``; numpy integers accepted; ``bool`` refused);
* ``float`` → JSON number written by Python's shortest round-trip ``repr``; ints are widened to
  float, ``-0.0`` becomes ``0.0``, NaN and ±Inf are refused (a float must be finite);
* ``string`` → the Unicode NFC normal form of the text, so composed and decomposed accents agree;
* null → JSON ``null``.

``record_id = sha256(canonical row bytes)`` as lowercase hex. Column names are not part of the
bytes (their order is fixed by the contract), and neither is the owner.

``record_ids(frame, schema)`` computes the same ids for a whole frame, column-wise: it normalises
each column once, then walks the rows as plain tuples (no per-row pandas indexing), about 100k rows
in a few hundred milliseconds. In a frame, pandas' missing markers (``None``, ``pd.NA`` and a NaN
in a float column) are null. A worker that re-reads the version's Parquet files and calls this
function gets the ids the registry holds; it should read them with
``to_pandas(types_mapper=pd.ArrowDtype)`` (or ``versions.load_version_frame``), because plain
``to_pandas`` turns an int column with nulls into floats, which an int column refuses.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from databright.crypto import canonical_json, sha256_hex
from databright.datasets.contracts import Column, Schema
from databright.errors import DatasetError

# Same parameters as crypto.canonical_json, built once: for a JSON array the output is identical.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"))


def _bad(col: Column, value: Any, why: str) -> DatasetError:
    return DatasetError(
        f"column {col.name!r}: {value!r} ({type(value).__name__}) {why}; canonical rows hold "
        f"{col.dtype} values here — validate the rows against the contract first, and read Parquet "
        "with to_pandas(types_mapper=pd.ArrowDtype)",
        column=col.name,
    )


def normalize_value(col: Column, value: Any) -> Any:
    """One value in canonical form for its column's dtype (``None`` for null)."""
    if value is None or value is pd.NA:
        return None
    if col.dtype == "int":
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
            raise _bad(col, value, "is not an integer")
        return int(value)
    if col.dtype == "float":
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise _bad(col, value, "is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise _bad(col, value, "is not finite")
        return number + 0.0  # IEEE: -0.0 + 0.0 == +0.0, every other value is unchanged
    if not isinstance(value, str):
        raise _bad(col, value, "is not a string")
    return unicodedata.normalize("NFC", value)


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
    return canonical_json([normalize_value(c, v) for c, v in zip(schema.columns, ordered, strict=True)])


def record_id(schema: Schema, values: Mapping[str, Any] | Sequence[Any]) -> str:
    return sha256_hex(canonical_row_bytes(schema, values))


def _column_values(series: pd.Series, col: Column) -> list[Any]:
    """The column's values in canonical form, computed column-wise."""
    missing = series.isna().to_numpy(dtype=bool)
    if (
        col.dtype == "float"
        and (pd.api.types.is_float_dtype(series.dtype) or pd.api.types.is_integer_dtype(series.dtype))
        and not pd.api.types.is_bool_dtype(series.dtype)
    ):
        numbers_ = series.to_numpy(dtype=np.float64, na_value=np.nan)
        infinite = np.isinf(numbers_)
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise _bad(col, float(numbers_[row]), f"at frame row {row} is not finite")
        values: list[Any] = (numbers_ + 0.0).tolist()
    elif col.dtype == "int" and pd.api.types.is_integer_dtype(series.dtype):
        values = series.to_numpy(dtype=np.int64, na_value=0).tolist()
    elif col.dtype == "string":
        nfc = unicodedata.normalize
        return [
            None if m else (nfc("NFC", v) if isinstance(v, str) else normalize_value(col, v))
            for v, m in zip(series.tolist(), missing, strict=True)
        ]
    else:
        return [None if m else normalize_value(col, v) for v, m in zip(series.tolist(), missing, strict=True)]
    if missing.any():
        for i in np.flatnonzero(missing).tolist():
            values[i] = None
    return values


def record_ids(frame: pd.DataFrame, schema: Schema) -> list[str]:
    """``record_id`` of every row of ``frame`` (which must hold the schema's columns), in row order."""
    absent = [n for n in schema.names if n not in frame.columns]
    if absent:
        raise DatasetError(
            f"frame lacks schema columns {absent}; it has {[str(c) for c in frame.columns]}",
            missing=absent,
        )
    columns = [_column_values(frame[c.name], c) for c in schema.columns]
    encode = _ENCODER.encode
    sha = hashlib.sha256
    return [sha(encode(row).encode("utf-8")).hexdigest() for row in zip(*columns, strict=True)]
