"""Python columns into DuckDB as one Arrow table: how the ledger and settlement write a batch.

Passing ``k`` Python lists as ``unnest($1::VARCHAR[])`` parameters converts every element through
DuckDB's Python value path; ``pyarrow.array`` builds each column in C and DuckDB scans the table
without a copy, which makes a period's inserts several times cheaper. Money never travels as an
Arrow integer or float: amounts go as decimal strings and the SQL casts them to HUGEINT.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

#: Column types a batch may use, by name (kept to the few the tables need).
TYPES = ("string", "int32", "int16", "bool")


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    return {"string": pa.string(), "int32": pa.int32(), "int16": pa.int16(), "bool": pa.bool_()}[kind]


@contextmanager
def arrow_view(
    con: duckdb.DuckDBPyConnection, columns: Mapping[str, tuple[str, Sequence[Any]]]
) -> Iterator[str]:
    """Register ``{name: (type, values)}`` as a view for the ``with`` block; yield its name.

    The name is unique per call, so two batches on one connection never see each other's rows.
    """
    import pyarrow as pa

    bad = sorted({kind for kind, _ in columns.values()} - set(TYPES))
    if bad:
        raise ValueError(f"arrow_view column types {bad} are not among {list(TYPES)}")
    table = pa.table(
        {name: pa.array(values, type=_arrow_type(kind)) for name, (kind, values) in columns.items()}
    )
    view = f"batch_{uuid.uuid4().hex}"
    con.register(view, table)
    try:
        yield view
    finally:
        con.unregister(view)
