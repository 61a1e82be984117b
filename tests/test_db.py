"""The exchange database: atomic transactions, and a clear error when another writer holds the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from databright.db import ExchangeDB
from databright.errors import RegistryError


def test_a_failed_transaction_leaves_nothing(file_db: ExchangeDB):
    with pytest.raises(RuntimeError), file_db.transaction() as con:
        con.execute("INSERT INTO providers VALUES ('p', 1, 1, 'simulated', now())")
        raise RuntimeError("crash mid-write")
    assert file_db.query("SELECT count(*) FROM providers") == [(0,)]


def test_in_memory_backend_keeps_state_between_connections(memory_db: ExchangeDB):
    with memory_db.transaction() as con:
        con.execute("INSERT INTO providers VALUES ('p', 1, 1, 'simulated', now())")
    assert memory_db.query("SELECT provider_id FROM providers") == [("p",)]


def test_a_locked_file_is_retried_then_refused_with_the_fix(file_db: ExchangeDB, tmp_path):
    file_db.query("SELECT 1")  # create the file and its schema
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(file_db.path)!r})
            print("locked", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RegistryError, match="another DataBright process is writing"):
            ExchangeDB(file_db.path, retries=2).query("SELECT 1")
    finally:
        holder.communicate("\n", timeout=30)
    # once the other writer is gone, the same call goes through
    assert ExchangeDB(file_db.path, retries=2).query("SELECT 1") == [(1,)]


def test_a_database_of_another_schema_version_is_refused_untouched(tmp_path):
    import duckdb

    from databright.db import SCHEMA_VERSION

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # a home made before schema versions: jobs without budget
        con.execute("CREATE TABLE jobs (job_id VARCHAR PRIMARY KEY, payment HUGEINT)")
    with pytest.raises(
        RegistryError, match=rf"schema version 1, this DataBright reads version {SCHEMA_VERSION}"
    ):
        ExchangeDB(path).query("SELECT count(*) FROM jobs")
    with duckdb.connect(str(path)) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert tables == {"jobs"}  # nothing was created in it


def test_a_new_database_records_its_schema_version(tmp_path):
    from databright.db import SCHEMA_VERSION

    db = ExchangeDB(tmp_path / "new.duckdb")
    assert db.query("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert ExchangeDB(tmp_path / "new.duckdb").query("SELECT count(*) FROM jobs") == [(0,)]  # reopens fine
