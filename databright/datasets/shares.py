"""Who owns a dataset, and how an owner takes records back out.

**Shares.** ``dataset_shares(db, dataset, version)`` lists each owner of a version with their
records and two shares, both in parts per million (``SHARE_SCALE``) apportioned by the largest
remainder method, so they are exact integers that sum to exactly one million:

* *by count* — the owner's records over the version's records (what holds until data is valued);
* *by value* — once settlements are posted for jobs on the dataset: the owner's measured value, the
  sum of the data-pool allocations paid to ``contributor:<owner>`` (integer minor units) for jobs
  on this dataset at this version or an earlier one. An owner who withdrew keeps the value that was
  paid for their past use, with zero records.

**Withdrawal.** ``withdraw_records(settings, db, dataset=, owner=, record_ids=)`` takes an owner's
records (all of them with ``record_ids=None``) out of the dataset by making a new version without
them — never by editing an old one::

    check ids (the owner's, in the latest version) → v<n+1> folder (empty delta + withdrawn.parquet
    + manifest) → both sealed under a fresh data key of v<n+1> (the shards workers read; DVC
    pushes them, not the plaintext) → DVC add + push → ONE registry transaction (version row,
    withdrawal, ids)

It has ingest's crash safety: it takes the same per-home lock, and if sealing, DVC or the registry
fails the folder and its ``.dvc`` file are removed and no registry row exists. Past versions, their
files, receipts and payouts are untouched, so a job that used v<n> stays auditable. Future jobs
stop using the records: the new version's release drops them, and ``check_trainable`` refuses a job
on an older version that still holds withdrawn records.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from databright.config import Settings
from databright.crypto import merkle_root_hex
from databright.datasets.contracts import load_contract
from databright.datasets.ingest import check_dataset_name, check_owner
from databright.datasets.registry import LIVE_RECORDS, NewVersion, Registry, insert_version_row
from databright.datasets.versions import (
    MANIFEST_FILE,
    DatasetVersion,
    check_record_ids,
    empty_records,
    version_folder,
    version_lock,
    withdrawn_table,
    write_version_folder,
)
from databright.db import ExchangeDB
from databright.errors import DatasetError, RegistryError
from databright.provenance.record import record_version
from databright.storage import dvc_versions

SHARE_SCALE = 1_000_000
_SHOWN = 5  # offending ids named in a refusal; the count says how many more


@dataclass(frozen=True)
class OwnerShare:
    owner: str
    records: int
    share_by_count_ppm: int
    value: int  # data-pool minor units paid for this dataset's jobs so far
    share_by_value_ppm: int | None  # None until a settlement for a job on the dataset is posted

    def to_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "records": self.records,
            "share_by_count_ppm": self.share_by_count_ppm,
            "value": self.value,
            "share_by_value_ppm": self.share_by_value_ppm,
        }


@dataclass(frozen=True)
class Shares:
    """The owners of one version and their shares; ``basis`` says which share is authoritative."""

    dataset: str
    version: int
    record_count: int
    merkle_root: str
    owners: tuple[OwnerShare, ...]
    valued_jobs: int  # jobs on the dataset (at this version or before) with posted data allocations
    value_total: int

    @property
    def basis(self) -> str:
        return "value" if self.value_total > 0 else "count"

    def share(self, owner: str) -> int:
        """The owner's share on ``basis``, in parts per million (0 for an unknown owner)."""
        for line in self.owners:
            if line.owner == owner:
                by_value = line.share_by_value_ppm
                return by_value if self.basis == "value" and by_value is not None else line.share_by_count_ppm
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "record_count": self.record_count,
            "merkle_root": self.merkle_root,
            "basis": self.basis,
            "share_scale": SHARE_SCALE,
            "valued_jobs": self.valued_jobs,
            "value_total": self.value_total,
            "owners": [o.to_dict() for o in self.owners],
        }

    def to_dataframe(self) -> pd.DataFrame:
        columns = ["owner", "records", "share_by_count_ppm", "value", "share_by_value_ppm"]
        return pd.DataFrame([o.to_dict() for o in self.owners], columns=columns)

    def __repr__(self) -> str:
        return (
            f"Shares({self.dataset} v{self.version}: {len(self.owners)} owners, "
            f"{self.record_count} records, by {self.basis})"
        )


def _apportion(weights: dict[str, int]) -> dict[str, int]:
    from databright.settlement.rounding import largest_remainder

    if not weights or sum(weights.values()) == 0:
        return {owner: 0 for owner in weights}
    return largest_remainder(SHARE_SCALE, weights)


def data_value_by_owner(db: ExchangeDB, dataset: str, version: int) -> tuple[dict[str, int], int]:
    """``owner -> posted data-pool minor units`` for jobs on ``dataset`` at ``version`` or before."""
    rows = db.query(
        """SELECT substr(a.holder, length('contributor:') + 1), sum(a.amount), count(DISTINCT a.job_id)
           FROM allocations a
           JOIN jobs j ON j.job_id = a.job_id
           JOIN settlements s ON s.period = a.period AND s.state = 'posted'
           WHERE a.role = 'data' AND a.holder LIKE 'contributor:%'
             AND j.dataset = ? AND j.dataset_version <= ?
           GROUP BY 1 ORDER BY 1""",
        [dataset, version],
    )
    jobs = db.query(
        """SELECT count(DISTINCT a.job_id) FROM allocations a
           JOIN jobs j ON j.job_id = a.job_id
           JOIN settlements s ON s.period = a.period AND s.state = 'posted'
           WHERE a.role = 'data' AND j.dataset = ? AND j.dataset_version <= ?""",
        [dataset, version],
    )
    return {r[0]: int(r[1]) for r in rows}, int(jobs[0][0])


def dataset_shares(db: ExchangeDB, dataset: str, version: int | None = None) -> Shares:
    """Each owner's records and shares in ``dataset`` at ``version`` (the latest when None)."""
    found = Registry(db).get_version(dataset, version)
    counts = dict(found.owner_counts)
    values, jobs = data_value_by_owner(db, dataset, found.version)
    owners = sorted(set(counts) | {o for o, v in values.items() if v > 0})
    by_count = _apportion({o: counts.get(o, 0) for o in owners})
    total = sum(values.values())
    by_value = _apportion({o: values.get(o, 0) for o in owners}) if total else {}
    lines = tuple(
        OwnerShare(
            owner=o,
            records=counts.get(o, 0),
            share_by_count_ppm=by_count[o],
            value=values.get(o, 0),
            share_by_value_ppm=by_value[o] if total else None,
        )
        for o in owners
    )
    return Shares(dataset, found.version, found.record_count, found.merkle_root, lines, jobs, total)


def check_trainable(db: ExchangeDB, version: DatasetVersion) -> None:
    """Refuse a new job on a version that holds records withdrawn since; older jobs stay as they were."""
    withdrawn = Registry(db).withdrawn_after(version.dataset, version.version)
    if withdrawn:
        latest = Registry(db).get_version(version.dataset)
        raise DatasetError(
            f"{version.dataset} v{version.version} holds {withdrawn} record(s) their owners withdrew "
            f"later; train on v{latest.version} (or a later version) instead",
            dataset=version.dataset,
            version=version.version,
            withdrawn=withdrawn,
        )


# --- withdrawal --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WithdrawResult:
    dataset: str
    owner: str
    parent: DatasetVersion
    version: DatasetVersion
    withdrawn_ids: tuple[str, ...]

    @property
    def withdrawn(self) -> int:
        return len(self.withdrawn_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "owner": self.owner,
            "parent": self.parent.version,
            "version": self.version.to_dict(),
            "withdrawn": self.withdrawn,
            "withdrawn_ids": list(self.withdrawn_ids),
        }

    def __repr__(self) -> str:
        return (
            f"WithdrawResult({self.dataset} v{self.parent.version} → v{self.version.version}: "
            f"{self.withdrawn} records of {self.owner} withdrawn, {self.version.record_count} remain)"
        )


def _named(ids: Sequence[str]) -> str:
    shown = ", ".join(f"{i[:16]}…" for i in ids[:_SHOWN])
    return shown + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


def _select(
    registry: Registry, latest: DatasetVersion, owner: str, record_ids: Sequence[str] | None
) -> list[str]:
    """The ids to withdraw, in sequence order; refuse anything that is not the owner's and current."""
    dataset = latest.dataset
    current = registry.record_owners(dataset, latest.version)
    mine = [rid for rid, o in current.items() if o == owner]
    if record_ids is None:
        if not mine:
            raise DatasetError(
                f"{owner!r} has no records in {dataset!r} v{latest.version} (owners: "
                f"{', '.join(sorted(latest.owner_counts)) or 'none'}); nothing to withdraw",
                dataset=dataset,
                owner=owner,
            )
        return mine
    if isinstance(record_ids, str):
        raise DatasetError("record_ids is one string; pass a list of record ids (or None for all)")
    asked = list(dict.fromkeys(check_record_ids(record_ids, "record_ids")))
    if not asked:
        raise DatasetError(
            f"no record ids given to withdraw from {dataset!r}; pass the ids, or None for all of {owner!r}'s"
        )
    status = registry.record_status(dataset, [rid for rid in asked if rid not in current])
    unknown = [rid for rid in asked if rid not in current and rid not in status]
    gone = [rid for rid in asked if rid in status and status[rid][2] is not None]
    others = [rid for rid in asked if rid in current and current[rid] != owner]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} not registered in {dataset!r} ({_named(unknown)})")
    if gone:
        problems.append(f"{len(gone)} already withdrawn ({_named(gone)}, in v{status[gone[0]][2]})")
    if others:
        problems.append(f"{len(others)} owned by someone else ({_named(others)})")
    if problems:
        raise DatasetError(
            f"cannot withdraw from {dataset!r} v{latest.version} for {owner!r}: "
            f"{'; '.join(problems)}; nothing was withdrawn — list only {owner!r}'s current records "
            f"(Registry.record_owners({dataset!r}, {latest.version}))",
            dataset=dataset,
            owner=owner,
            unknown=unknown,
            already_withdrawn=gone,
            not_owned=others,
        )
    wanted = set(asked)
    return [rid for rid in mine if rid in wanted]


def withdraw_records(
    settings: Settings,
    db: ExchangeDB,
    *,
    dataset: str,
    owner: str,
    record_ids: Sequence[str] | None = None,
) -> WithdrawResult:
    """Make a new version of ``dataset`` without ``owner``'s ``record_ids`` (all of them when None)."""
    check_dataset_name(dataset)
    check_owner(owner)
    registry = Registry(db)
    with version_lock(settings.home):
        latest = registry.get_version(dataset)
        ids = _select(registry, latest, owner, record_ids)
        withdrawn = set(ids)
        remaining = [
            rid for rid in registry.version_record_ids(dataset, latest.version) if rid not in withdrawn
        ]
        owner_counts = dict(latest.owner_counts)
        owner_counts[owner] -= len(ids)
        if owner_counts[owner] == 0:
            del owner_counts[owner]
        contract = load_contract(settings.contracts_dir, latest.contract_kind)
        if contract.schema.digest != latest.schema_digest:
            raise DatasetError(
                f"contract {latest.contract_kind}'s schema changed since {dataset!r} v{latest.version}; "
                "restore the schema before withdrawing, so the new version keeps the dataset's schema",
                dataset=dataset,
            )
        number = latest.version + 1
        merkle = merkle_root_hex([bytes.fromhex(i) for i in remaining])
        workspace = settings.workspace_dir
        dvc_versions.init_workspace(workspace, settings.dvc_remote)
        folder = version_folder(dataset, number)
        dvc_versions.untrack(workspace, folder)  # the leftover of a crashed attempt, never registered
        written = write_version_folder(
            workspace,
            dataset=dataset,
            version=number,
            parent=latest,
            contract=contract,
            records=empty_records(contract.schema),
            report=None,
            merkle_root=merkle,
            owner_counts=owner_counts,
            withdrawn=ids,
            contract_digest=latest.contract_digest,
        )
        try:
            from databright.trust.keys import seal_new_version  # the trust package loads on first use

            worker_files = {written.data_path: written.data_digest}
            if written.withdrawn_path is not None and written.withdrawn_digest is not None:
                worker_files[written.withdrawn_path] = written.withdrawn_digest
            seal_new_version(settings, db, dataset, number, worker_files)
            md5 = dvc_versions.track_and_push(workspace, folder)
            new_version = NewVersion(
                version=number,
                parent=latest.version,
                contract_digest=latest.contract_digest,
                schema_digest=latest.schema_digest,
                merkle_root=merkle,
                record_count=len(remaining),
                manifest_key=f"{folder}/{MANIFEST_FILE}",
                manifest_digest=written.manifest_digest,
                data_path=written.data_path,
                data_digest=written.data_digest,
                dvc_md5=md5,
                withdrawn_path=written.withdrawn_path,
                withdrawn_digest=written.withdrawn_digest,
            )
            commit_withdrawal(db, dataset, owner, new_version, ids)
        except BaseException:
            dvc_versions.untrack(workspace, folder)
            raise
        record_version(settings, db, dataset, number)  # outside the try: the version stands
    return WithdrawResult(dataset, owner, latest, registry.get_version(dataset, number), tuple(ids))


def commit_withdrawal(db: ExchangeDB, dataset: str, owner: str, v: NewVersion, ids: Sequence[str]) -> None:
    """The version row, the withdrawal row and the withdrawn ids, in one transaction.

    The ownership check is repeated inside the transaction, so a concurrent change can never leave a
    half-withdrawn version.
    """
    import duckdb

    parent = v.parent or 0
    now = dt.datetime.now(dt.UTC)
    try:
        with db.transaction() as con:
            insert_version_row(con, dataset, v, now, retry="withdraw again")
            con.register("withdrawn_ids", withdrawn_table(ids))
            try:
                bad = con.execute(
                    f"""SELECT c.record_id FROM withdrawn_ids c
                        LEFT JOIN (SELECT r.record_id, r.owner {LIVE_RECORDS}) l ON l.record_id = c.record_id
                        WHERE l.owner IS DISTINCT FROM ? LIMIT 1""",
                    [parent, dataset, parent, owner],
                ).fetchall()
                if bad:
                    raise RegistryError(
                        f"record {bad[0][0][:16]}… stopped being {owner!r}'s in {dataset!r} while the "
                        "withdrawal was prepared; nothing was withdrawn — withdraw again"
                    )
                con.execute(
                    "INSERT INTO withdrawn_records SELECT ?, record_id, ? FROM withdrawn_ids",
                    [dataset, v.version],
                )
            finally:
                con.unregister("withdrawn_ids")
            con.execute(
                "INSERT INTO withdrawals VALUES (?, ?, ?, ?, ?, ?, ?)",
                [dataset, v.version, owner, len(ids), v.withdrawn_path, v.withdrawn_digest, now],
            )
    except duckdb.Error as exc:
        raise RegistryError(
            f"the registry refused the withdrawal of {len(ids)} records of {owner!r} from {dataset!r}: "
            f"{exc}; nothing was withdrawn — withdraw again"
        ) from exc
