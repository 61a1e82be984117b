"""The dataset registry: datasets, their versions, every record's owner, and every submission.

Tables (DuckDB, created by ``ExchangeDB`` from ``DDL``):

* ``datasets`` — one row per dataset; a dataset keeps the contract kind it was registered with;
* ``dataset_versions`` — one row per immutable version (Merkle root, manifest and data digests,
  the DVC md5 of the version folder);
* ``records`` — one row per distinct record: its owner, the version that added it, and ``seq``,
  its 1-based position in the dataset. A record id is registered once, so credit for a duplicate
  stays with the lowest ``seq`` (the first registrant);
* ``submissions`` and ``quarantine`` — every file ever submitted, accepted or not, with the rows
  the contract refused and why;
* ``withdrawals`` — one row per version that withdrew records: who, how many, its withdrawal file;
  ``withdrawn_records`` — each withdrawn id and the first version without it. Records are never
  deleted, so every old version still lists exactly the ids it had, and a withdrawn record stays
  registered: the same row submitted again is refused as a duplicate.

A record is *in* version ``v`` when it was added at or before ``v`` and not withdrawn at or before
``v``; every read below applies that rule. Reads go through ``Registry``; the writes
(``Registry.commit_submission`` here, ``shares.withdraw_records``'s transaction) are single
transactions over ``insert_version_row``, so a version is registered completely or not at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from databright.datasets.versions import DatasetVersion
from databright.errors import RegistryError, UnknownDataset

if TYPE_CHECKING:
    from collections.abc import Iterable

    import duckdb

    from databright.db import ExchangeDB

DDL = """
CREATE TABLE IF NOT EXISTS datasets (
    name            VARCHAR PRIMARY KEY,
    contract_kind   VARCHAR NOT NULL,
    contract_digest VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_versions (
    dataset         VARCHAR NOT NULL,
    version         INTEGER NOT NULL CHECK (version >= 1),
    parent          INTEGER,
    contract_digest VARCHAR NOT NULL,
    schema_digest   VARCHAR NOT NULL,
    merkle_root     VARCHAR NOT NULL,
    record_count    BIGINT NOT NULL CHECK (record_count >= 0),
    manifest_key    VARCHAR NOT NULL,   -- manifest.json, relative to the workspace
    manifest_digest VARCHAR NOT NULL,
    data_path       VARCHAR NOT NULL,   -- this version's delta Parquet, relative to the workspace
    data_digest     VARCHAR NOT NULL,
    dvc_md5         VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (dataset, version)
);
CREATE TABLE IF NOT EXISTS records (
    dataset   VARCHAR NOT NULL,
    record_id VARCHAR NOT NULL,
    owner     VARCHAR NOT NULL,
    version   INTEGER NOT NULL,
    seq       BIGINT NOT NULL           -- 1-based position in the dataset; first registrant wins
    -- (dataset, record_id) is unique, checked by the one insert (_insert_version) rather than by a
    -- PRIMARY KEY: DuckDB's index made registering 1M records 2.3 s slower, and every lookup here
    -- is a hash join that does not use it.
);
CREATE TABLE IF NOT EXISTS submissions (
    submission_id VARCHAR PRIMARY KEY,
    dataset       VARCHAR NOT NULL,
    owner         VARCHAR NOT NULL,
    file_name     VARCHAR NOT NULL,
    file_digest   VARCHAR NOT NULL,
    rows_received BIGINT NOT NULL,
    accepted      BIGINT NOT NULL,
    quarantined   BIGINT NOT NULL,      -- distinct rows
    duplicates    BIGINT NOT NULL,
    version       INTEGER,              -- NULL when nothing was accepted
    report_digest VARCHAR NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    submission_id VARCHAR NOT NULL,
    row_number    BIGINT NOT NULL,
    column_name   VARCHAR NOT NULL,
    expectation   VARCHAR NOT NULL,
    value         VARCHAR
);
CREATE TABLE IF NOT EXISTS withdrawals (
    dataset         VARCHAR NOT NULL,
    version         INTEGER NOT NULL,   -- the version made by the withdrawal
    owner           VARCHAR NOT NULL,
    record_count    BIGINT NOT NULL CHECK (record_count > 0),
    withdrawn_path  VARCHAR NOT NULL,   -- withdrawn.parquet, relative to the workspace
    withdrawn_digest VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (dataset, version)
);
CREATE TABLE IF NOT EXISTS withdrawn_records (
    dataset   VARCHAR NOT NULL,
    record_id VARCHAR NOT NULL,
    version   INTEGER NOT NULL,         -- the first version without the record
    PRIMARY KEY (dataset, record_id)
);
"""

# The records of version v (params: v, dataset, v): added at or before v, not withdrawn by v.
LIVE_RECORDS = """FROM records r LEFT JOIN withdrawn_records w
    ON w.dataset = r.dataset AND w.record_id = r.record_id AND w.version <= ?
    WHERE r.dataset = ? AND r.version <= ? AND w.record_id IS NULL"""
_OWNER_COUNTS = f"SELECT r.owner, count(*) {LIVE_RECORDS} GROUP BY r.owner ORDER BY r.owner"
_VERSION_COLUMNS = (
    "v.dataset, v.version, v.parent, d.contract_kind, v.contract_digest, v.schema_digest, v.merkle_root, "
    "v.record_count, v.manifest_digest, v.dvc_md5"
)


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    contract_kind: str
    contract_digest: str
    latest_version: int
    record_count: int
    owners: int
    created_at: dt.datetime


@dataclass(frozen=True)
class Submission:
    submission_id: str
    dataset: str
    owner: str
    file_name: str
    file_digest: str
    rows_received: int
    accepted: int
    quarantined: int
    duplicates: int
    version: int | None
    report_digest: str
    created_at: dt.datetime


@dataclass(frozen=True)
class NewVersion:
    """The registry rows of one version, as ingest prepares them."""

    version: int
    parent: int | None
    contract_digest: str
    schema_digest: str
    merkle_root: str
    record_count: int
    manifest_key: str
    manifest_digest: str
    data_path: str
    data_digest: str
    dvc_md5: str
    withdrawn_path: str | None = None
    withdrawn_digest: str | None = None


class Registry:
    """Typed reads over the registry tables, and the submission write."""

    def __init__(self, db: ExchangeDB) -> None:
        self.db = db

    # --- datasets ------------------------------------------------------------------------------
    def dataset_contract(self, dataset: str) -> tuple[str, str] | None:
        """``(contract_kind, contract_digest)`` of a registered dataset, or None if it is new."""
        rows = self.db.query("SELECT contract_kind, contract_digest FROM datasets WHERE name = ?", [dataset])
        return (rows[0][0], rows[0][1]) if rows else None

    def list_datasets(self) -> list[DatasetSummary]:
        """Every dataset with its latest version's record count and number of owners."""
        rows = self.db.query(
            """SELECT d.name, d.contract_kind, d.contract_digest, v.version, v.record_count, d.created_at
               FROM datasets d JOIN dataset_versions v ON v.dataset = d.name
               WHERE v.version = (SELECT max(version) FROM dataset_versions WHERE dataset = d.name)
               ORDER BY d.name"""
        )
        return [
            DatasetSummary(
                r[0], r[1], r[2], int(r[3]), int(r[4]), len(self.owner_counts(r[0], int(r[3]))), r[5]
            )
            for r in rows
        ]

    def _unknown(self, dataset: str, version: int | None = None) -> UnknownDataset:
        names = [r[0] for r in self.db.query("SELECT name FROM datasets ORDER BY name")]
        if dataset not in names:
            return UnknownDataset(
                f"no dataset {dataset!r} in the registry; registered: {', '.join(names) or '(none)'} — "
                "register it with `databright dataset add`",
                dataset=dataset,
            )
        versions = [
            r[0]
            for r in self.db.query(
                "SELECT version FROM dataset_versions WHERE dataset = ? ORDER BY version", [dataset]
            )
        ]
        return UnknownDataset(
            f"dataset {dataset!r} has no version {version}; its versions are "
            f"{', '.join(f'v{v}' for v in versions)}",
            dataset=dataset,
            version=version,
        )

    # --- versions ------------------------------------------------------------------------------
    def latest_version(self, dataset: str) -> DatasetVersion | None:
        """The newest version of ``dataset``, or None when it has none (or does not exist)."""
        with self.db.connect() as con:
            return self._version_on(con, dataset, None)

    def get_version(self, dataset: str, version: int | None = None) -> DatasetVersion:
        """One version (the latest when ``version`` is None); ``UnknownDataset`` if there is none."""
        with self.db.connect() as con:
            found = self._version_on(con, dataset, version)
        if found is None:
            raise self._unknown(dataset, version)
        return found

    @staticmethod
    def _version_on(
        con: duckdb.DuckDBPyConnection, dataset: str, version: int | None
    ) -> DatasetVersion | None:
        # One connection for the four reads: opening the database file dominates their cost.
        if version is None:
            latest = con.execute(
                "SELECT max(version) FROM dataset_versions WHERE dataset = ?", [dataset]
            ).fetchone()
            if latest is None or latest[0] is None:
                return None
            version = int(latest[0])
        r = con.execute(
            f"""SELECT {_VERSION_COLUMNS} FROM dataset_versions v JOIN datasets d ON d.name = v.dataset
                WHERE v.dataset = ? AND v.version = ?""",
            [dataset, version],
        ).fetchone()
        if r is None:
            return None
        deltas = con.execute(
            "SELECT data_path, data_digest FROM dataset_versions WHERE dataset = ? AND version <= ? "
            "ORDER BY version",
            [dataset, version],
        ).fetchall()
        owners = con.execute(_OWNER_COUNTS, [version, dataset, version]).fetchall()
        withdrawn = con.execute(
            "SELECT withdrawn_path, withdrawn_digest FROM withdrawals WHERE dataset = ? AND version <= ? "
            "ORDER BY version",
            [dataset, version],
        ).fetchall()
        return DatasetVersion(
            dataset=r[0],
            version=int(r[1]),
            parent=None if r[2] is None else int(r[2]),
            contract_kind=r[3],
            contract_digest=r[4],
            schema_digest=r[5],
            merkle_root=r[6],
            record_count=int(r[7]),
            owner_counts={o[0]: int(o[1]) for o in owners},
            data_paths=tuple(d[0] for d in deltas),
            data_digests=tuple(d[1] for d in deltas),
            manifest_digest=r[8],
            dvc_md5=r[9],
            withdrawn_paths=tuple(w[0] for w in withdrawn),
            withdrawn_digests=tuple(w[1] for w in withdrawn),
        )

    def list_versions(self, dataset: str) -> list[DatasetVersion]:
        rows = self.db.query(
            "SELECT version FROM dataset_versions WHERE dataset = ? ORDER BY version", [dataset]
        )
        return [self.get_version(dataset, int(r[0])) for r in rows]

    # --- records -------------------------------------------------------------------------------
    def owner_counts(self, dataset: str, version: int) -> dict[str, int]:
        """Records per owner in ``version`` (after its withdrawals), sorted by owner."""
        return {r[0]: int(r[1]) for r in self.db.query(_OWNER_COUNTS, [version, dataset, version])}

    def version_record_ids(self, dataset: str, version: int) -> list[str]:
        """Every record id of ``version`` in sequence order (the Merkle leaf order)."""
        rows = self.db.query(f"SELECT r.record_id {LIVE_RECORDS} ORDER BY r.seq", [version, dataset, version])
        return [r[0] for r in rows]

    def record_owners(self, dataset: str, version: int) -> dict[str, str]:
        """``record_id -> owner`` for ``version``, in sequence order: what valuation pays per owner."""
        sql = f"SELECT r.record_id, r.owner {LIVE_RECORDS} ORDER BY r.seq"
        return {r[0]: r[1] for r in self.db.query(sql, [version, dataset, version])}

    def record_status(self, dataset: str, ids: Iterable[str]) -> dict[str, tuple[str, int, int | None]]:
        """``record_id -> (owner, version added, version withdrawn or None)`` for the registered ids."""
        rows = self._join_ids(
            ids,
            """SELECT r.record_id, r.owner, r.version, w.version FROM candidate_ids c
               JOIN records r ON r.dataset = ? AND r.record_id = c.record_id
               LEFT JOIN withdrawn_records w ON w.dataset = r.dataset AND w.record_id = r.record_id""",
            [dataset],
        )
        return {r[0]: (r[1], int(r[2]), None if r[3] is None else int(r[3])) for r in rows}

    def withdrawn_after(self, dataset: str, version: int) -> int:
        """How many records of ``version`` later versions withdrew (0: nothing of it was withdrawn)."""
        rows = self.db.query(
            """SELECT count(*) FROM withdrawn_records w JOIN records r
               ON r.dataset = w.dataset AND r.record_id = w.record_id
               WHERE w.dataset = ? AND w.version > ? AND r.version <= ?""",
            [dataset, version, version],
        )
        return int(rows[0][0])

    def existing_ids(self, dataset: str, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` already registered in ``dataset`` (by anyone, withdrawn or not)."""
        sql = """SELECT DISTINCT c.record_id FROM candidate_ids c
                 JOIN records r ON r.dataset = ? AND r.record_id = c.record_id"""
        return {r[0] for r in self._join_ids(ids, sql, [dataset])}

    def _join_ids(self, ids: Iterable[str], sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        """Run ``sql`` with ``ids`` registered as the table ``candidate_ids(record_id)``."""
        candidates = pa.table({"record_id": pa.array(list(ids), pa.string())})
        if candidates.num_rows == 0:
            return []
        with self.db.connect() as con:
            con.register("candidate_ids", candidates)
            try:
                return con.execute(sql, params).fetchall()
            finally:
                con.unregister("candidate_ids")

    def next_seq(self, dataset: str) -> int:
        rows = self.db.query("SELECT coalesce(max(seq), 0) FROM records WHERE dataset = ?", [dataset])
        return int(rows[0][0]) + 1

    # --- submissions ---------------------------------------------------------------------------
    def get_submission(self, submission_id: str) -> Submission:
        rows = self.db.query("SELECT * FROM submissions WHERE submission_id = ?", [submission_id])
        if not rows:
            raise RegistryError(
                f"no submission {submission_id!r}; list them with Registry.list_submissions(dataset)"
            )
        return self._submission(rows[0])

    def list_submissions(self, dataset: str | None = None) -> list[Submission]:
        sql, params = "SELECT * FROM submissions", []
        if dataset is not None:
            sql, params = sql + " WHERE dataset = ?", [dataset]
        return [
            self._submission(r) for r in self.db.query(sql + " ORDER BY created_at, submission_id", params)
        ]

    @staticmethod
    def _submission(r: tuple[Any, ...]) -> Submission:
        version = None if r[9] is None else int(r[9])
        return Submission(
            r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]), int(r[8]), version, *r[10:]
        )

    def quarantine_rows(self, submission_id: str) -> list[tuple[int, str, str, str | None]]:
        rows = self.db.query(
            """SELECT row_number, column_name, expectation, value FROM quarantine
               WHERE submission_id = ? ORDER BY row_number, column_name, expectation""",
            [submission_id],
        )
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    # --- the one write -------------------------------------------------------------------------
    def commit_submission(
        self,
        submission: Submission,
        *,
        contract_kind: str,
        contract_digest: str,
        quarantine: pa.Table,
        new_version: NewVersion | None = None,
        records: pa.Table | None = None,
    ) -> None:
        """Register a submission in one transaction: dataset (if new), version, records, quarantine.

        ``records`` has columns ``record_id``, ``owner``, ``seq``; ``quarantine`` has
        ``row_number``, ``column``, ``expectation``, ``value``.
        """
        import duckdb

        now = submission.created_at
        try:
            with self.db.transaction() as con:
                if new_version is not None:
                    self._insert_version(
                        con, submission, contract_kind, contract_digest, new_version, records, now
                    )
                con.execute(
                    "INSERT INTO submissions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        submission.submission_id,
                        submission.dataset,
                        submission.owner,
                        submission.file_name,
                        submission.file_digest,
                        submission.rows_received,
                        submission.accepted,
                        submission.quarantined,
                        submission.duplicates,
                        submission.version,
                        submission.report_digest,
                        now,
                    ],
                )
                if quarantine.num_rows:
                    con.register("new_quarantine", quarantine)
                    con.execute(
                        """INSERT INTO quarantine SELECT ?, row_number, "column", expectation, value
                           FROM new_quarantine""",
                        [submission.submission_id],
                    )
                    con.unregister("new_quarantine")
        except duckdb.Error as exc:
            raise RegistryError(
                f"the registry refused submission {submission.submission_id} to {submission.dataset!r}: "
                f"{exc}; nothing was registered — submit the file again"
            ) from exc

    @staticmethod
    def _insert_version(
        con: duckdb.DuckDBPyConnection,
        submission: Submission,
        contract_kind: str,
        contract_digest: str,
        v: NewVersion,
        records: pa.Table | None,
        now: dt.datetime,
    ) -> None:
        if records is None:
            raise RegistryError(f"version {v.version} of {submission.dataset!r} needs its records table")
        dataset = submission.dataset
        existing = con.execute("SELECT contract_kind FROM datasets WHERE name = ?", [dataset]).fetchall()
        if not existing:
            con.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?)", [dataset, contract_kind, contract_digest, now]
            )
        elif existing[0][0] != contract_kind:
            raise RegistryError(
                f"dataset {dataset!r} uses contract {existing[0][0]}, not {contract_kind}; "
                "a dataset keeps its contract"
            )
        insert_version_row(con, dataset, v, now, retry="submit the file again")
        con.register("new_records", records)
        try:
            within, held = con.execute(
                """SELECT (SELECT count(*) - count(DISTINCT record_id) FROM new_records),
                          (SELECT count(*) FROM new_records n JOIN records r
                           ON r.dataset = ? AND r.record_id = n.record_id)""",
                [dataset],
            ).fetchall()[0]
            if within or held:
                raise RegistryError(
                    f"version {v.version} of {dataset!r} repeats record ids ({within} within the version, "
                    f"{held} already registered); nothing was registered — submit the file again so "
                    "duplicates are refused before publishing"
                )
            con.execute(
                "INSERT INTO records SELECT ?, record_id, owner, ?, seq FROM new_records ORDER BY seq",
                [dataset, v.version],
            )
        finally:
            con.unregister("new_records")


def insert_version_row(
    con: duckdb.DuckDBPyConnection, dataset: str, v: NewVersion, now: dt.datetime, *, retry: str
) -> None:
    """Insert one ``dataset_versions`` row, refusing it unless it is the next version after its parent."""
    latest = con.execute(
        "SELECT coalesce(max(version), 0) FROM dataset_versions WHERE dataset = ?", [dataset]
    ).fetchone()
    if latest is None or int(latest[0]) != (v.parent or 0) or v.version != (v.parent or 0) + 1:
        raise RegistryError(
            f"dataset {dataset!r} moved on while v{v.version} was prepared (latest is now "
            f"v{latest[0] if latest else '?'}); {retry}"
        )
    con.execute(
        """INSERT INTO dataset_versions (dataset, version, parent, contract_digest, schema_digest,
               merkle_root, record_count, manifest_key, manifest_digest, data_path, data_digest,
               dvc_md5, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            dataset,
            v.version,
            v.parent,
            v.contract_digest,
            v.schema_digest,
            v.merkle_root,
            v.record_count,
            v.manifest_key,
            v.manifest_digest,
            v.data_path,
            v.data_digest,
            v.dvc_md5,
            now,
        ],
    )
