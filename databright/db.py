"""The exchange database: one DuckDB file holding the registry, the market and the ledger.

DuckDB allows one writing process per file, so every use is short: open, do one transaction,
close. Opening retries with bounded exponential backoff while another process holds the lock.
Workers never open this database; they receive files and return signed receipts.

Each domain owns its tables and declares them as ``DDL`` in its own module; ``ExchangeDB``
creates whatever is missing on first use. Money columns are HUGEINT minor units, never floats.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.errors import DatabrightError, RegistryError

if TYPE_CHECKING:
    import duckdb

# Modules whose ``DDL`` string makes up the schema, in dependency order.
_SCHEMA_MODULES = (
    "databright.datasets.registry",
    "databright.trust.registry",
    "databright.trust.intake",
    "databright.trust.keys",
    "databright.provenance.statements",
    "databright.market.offers",
    "databright.training.jobs",
    "databright.training.valuation_store",
    "databright.ledger.store",
    "databright.ledger.audit_log",
    "databright.settlement.store",
)


#: Bumped whenever a table changes shape in a way ``CREATE TABLE IF NOT EXISTS`` cannot apply to an
#: existing file. 2: jobs.budget and jobs.validation_key, allocations keyed by basis too. 3: jobs.shard_rank
#: and jobs.shard_count (data-parallel parts).
SCHEMA_VERSION = 3

_SCHEMA_VERSION_DDL = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"


def schema_ddl() -> list[str]:
    return [importlib.import_module(name).DDL for name in _SCHEMA_MODULES]


def _check_schema_version(con: duckdb.DuckDBPyConnection, where: str) -> None:
    """Refuse, before changing anything, a database made by another schema version: its tables would
    lack columns this code reads, and the first query would fail with a bare DuckDB binder error."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "jobs" not in tables:
        return  # a new database: created at this version below
    found = (
        con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
        if "schema_version" in tables
        else 1
    )
    if found != SCHEMA_VERSION:
        raise RegistryError(
            f"the exchange database {where} has schema version {found}, this DataBright reads version "
            f"{SCHEMA_VERSION}; nothing in it was changed. Move the home folder aside and create a new one "
            "(e.g. `make demo`), or open it with the DataBright version that made it",
            found=found,
            expected=SCHEMA_VERSION,
        )


class ExchangeDB:
    """Short-lived connections to the exchange database file, or one in-memory database.

    ``ExchangeDB(None)`` is the in-memory backend used by unit tests: the same SQL, no file.
    """

    def __init__(self, path: Path | None, retries: int = 8) -> None:
        self.path = path
        self.retries = retries
        self._memory: duckdb.DuckDBPyConnection | None = None
        self._ready = False

    def _open(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        if self.path is None:
            if self._memory is None:
                self._memory = duckdb.connect(":memory:")
            return self._memory
        self.path.parent.mkdir(parents=True, exist_ok=True)
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or attempt == self.retries:
                    raise RegistryError(
                        f"cannot open the exchange database {self.path}: {exc}; "
                        "another DataBright process is writing to it — wait for it to finish and retry"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for reads or autocommitted writes; closed on exit (file backend)."""
        con = self._open()
        try:
            if not self._ready:
                _check_schema_version(con, str(self.path or ":memory:"))
                for ddl in [*schema_ddl(), _SCHEMA_VERSION_DDL]:
                    con.execute(ddl)
                con.execute(
                    "INSERT INTO schema_version SELECT ? WHERE NOT EXISTS (SELECT 1 FROM schema_version)",
                    [SCHEMA_VERSION],
                )
                self._ready = True
            yield con
        finally:
            if self.path is not None:
                con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One atomic unit of work: everything inside commits together or not at all."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.connect() as con:
            return con.execute(sql, params or []).fetchall()


@contextmanager
def write_conflicts_as(error: type[DatabrightError], message: str, **context: Any) -> Iterator[None]:
    """Raise ``error(message)`` when DuckDB rolls a transaction back because another one wrote the
    same rows first.

    DuckDB's optimistic concurrency reports a lost race as ``TransactionException`` (a write-write
    conflict, at a statement or at COMMIT) or ``ConstraintException`` (the winner's key is already
    there); ``ExchangeDB.transaction`` has rolled back by then, so the loser wrote nothing and may
    simply run again. ``message`` says what was being done and how to retry; DuckDB's own words are
    appended.
    """
    import duckdb

    try:
        yield
    except (duckdb.TransactionException, duckdb.ConstraintException) as exc:
        raise error(f"{message} (DuckDB: {exc})", **context) from exc
