"""The code that runs inside an attested worker for one job: check, train, meter, value, sign.

``run_job`` trusts nothing it is handed except its own session key and the measurement its worker
took of the task folder:

0. (a sealed job, in the worker) ``open_job_data`` unwraps the data keys released to the session's
   X25519 key, decrypts the version's sealed shards into the session's private folder and checks
   each against the registry's digest; a tampered shard refuses the job here, before any training;
1. it loads the dataset version's Parquet files in order, drops the ids the version withdrew
   (``spec.withdrawn_files``; each must be in the data), and recomputes every remaining record id
   from the row's canonical bytes, then the Merkle root over the ids; a single altered cell, a
   swapped or missing row, or a wrong file refuses the job with ``IntegrityError`` before training;
2. it loads the trainer's validation file (CSV or Parquet) and the task's entrypoint;
3. the task trains and meters every record it reads, and credits each record with its in-run
   contribution: at every step that reads it, its gradient dotted with the validation-loss gradient
   (``databright.valuation.inrun``) — a value for every record the job trained on, at a small cost;
4. per owner: rows used, visits and summed in-run contribution; a Merkle root over every
   ``(owner, record, visits, contribution)`` in dataset order; work units = total visits × model
   cost. (Dividends are paid on a separate, signed valuation by the ``knn_shapley`` value task —
   ``value_job`` — not on these contributions, which describe this one training run.)
5. the model is written to ``output_dir/model.pt`` (with ``records.parquet``, the root's leaves)
   and a ``UsageReceipt`` naming all of it is signed by the session key.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from databright.crypto import SigningKey, digest_file, merkle_root_hex, sha256_hex
from databright.datasets.canonical import record_ids
from databright.datasets.contracts import Schema
from databright.errors import ConfigError, IntegrityError, SchemaMismatch, TrainingError, UnreadableFile
from databright.training.data_parallel import DataShard, GlooGroup, Rendezvous, shard_bounds
from databright.training.spec import JobOutcome, JobSpec
from databright.training.tasks import TrainOutput, load_task
from databright.trust.evidence import iso, utc
from databright.trust.kex import KexKeyPair, KeyRelease
from databright.trust.receipts import OwnerUsage, UsageReceipt, records_root, sign_receipt
from databright.trust.sealing import open_shards
from databright.valuation import ValuationResult
from databright.valuation.inrun import inrun_result

MODEL_FILE = "model.pt"
RECORDS_FILE = "records.parquet"
_META_COLUMNS = ("record_id", "owner")
# The training settings an in-run contribution depends on, recorded with it.
_INRUN_PARAMS = ("epochs", "batch_size", "learning_rate", "weight_decay")


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise TrainingError(f"{what} {path} does not exist in the worker; fetch it before running the job")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise UnreadableFile(
            f"{what} {path} cannot be read as {suffix[1:]} ({exc}); re-export the file"
        ) from exc
    raise UnreadableFile(f"{what} {path} has suffix {suffix!r}; give a .csv or .parquet file")


def open_job_data(spec: JobSpec, kex: KexKeyPair, private_dir: Path) -> JobSpec:
    """The sealed ``spec`` as a plain one reading decrypted copies in ``private_dir`` (step 0)."""
    if not spec.sealed or spec.key_release is None:
        raise TrainingError(
            f"job {spec.job_id} names plaintext data files; an attested worker reads only the sealed "
            "shards of a version, with the data keys released to its session (JobSpec.shards, key_release)"
        )
    release = KeyRelease.from_dict(spec.key_release)
    wanted = (spec.dataset, spec.dataset_version, spec.attestation_result_id, spec.task)
    got = (release.dataset, release.version, release.result_id, release.task)
    if got != wanted:
        raise IntegrityError(
            f"job {spec.job_id}: key release {release.release_id} is for {got[0]!r} v{got[1]}, result "
            f"{got[2]}, task {got[3]!r}, but the job is {wanted[0]!r} v{wanted[1]}, result {wanted[2]}, task "
            f"{wanted[3]!r}; ask the key service for a release for this job"
        )
    if release.assurance != spec.assurance:
        raise IntegrityError(
            f"job {spec.job_id}: the keys were released under {release.assurance!r} attestation, the job "
            f"says {spec.assurance!r}; copy the assurance from the attestation result"
        )
    data, withdrawn = open_shards(spec.dataset, spec.shards, kex.unwrap_release(release), private_dir)
    return dataclasses.replace(
        spec,
        data_files=tuple(str(p) for p in data),
        withdrawn_files=tuple(str(p) for p in withdrawn),
        shards=(),
        key_release=None,
    )


def load_withdrawn(spec: JobSpec) -> set[str]:
    """Every record id listed in the spec's withdrawal files."""
    withdrawn: set[str] = set()
    for file in spec.withdrawn_files:
        frame = _read_table(Path(file), "withdrawal file")
        if "record_id" not in frame.columns:
            raise SchemaMismatch(
                f"withdrawal file {file} lacks the record_id column (has {list(frame.columns)}); pass the "
                "version's withdrawn.parquet files from datasets.release"
            )
        withdrawn.update(str(v) for v in frame["record_id"].tolist())
    return withdrawn


def load_dataset(spec: JobSpec, schema: Schema) -> tuple[pd.DataFrame, list[tuple[str, int]]]:
    """The version's rows in order, and for each global row its (file, row within file).

    Rows whose id a withdrawal file lists are dropped; an id listed there but absent from the data
    means the files are not one version's release, and the job is refused.
    """
    frames: list[pd.DataFrame] = []
    origin: list[tuple[str, int]] = []
    wanted = [*schema.names, *_META_COLUMNS]
    for file in spec.data_files:
        frame = _read_table(Path(file), "data file")
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise SchemaMismatch(
                f"data file {file} lacks columns {missing} (has {list(frame.columns)}); a dataset version "
                "file holds the schema columns plus record_id and owner"
            )
        frames.append(frame[wanted])
        origin.extend((file, row) for row in range(len(frame)))
    dataset = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    withdrawn = load_withdrawn(spec)
    if withdrawn:
        listed = dataset["record_id"].astype(str)
        absent = withdrawn - set(listed)
        if absent:
            raise IntegrityError(
                f"dataset {spec.dataset} v{spec.dataset_version}: the withdrawal files list "
                f"{len(absent)} record(s) that no data file holds (e.g. {sorted(absent)[0][:16]}…); the "
                "files are not one version's release — fetch the version's files again",
                absent=len(absent),
            )
        keep = ~listed.isin(withdrawn).to_numpy()
        dataset = dataset[keep].reset_index(drop=True)
        origin = [o for o, k in zip(origin, keep.tolist(), strict=True) if k]
    if dataset.empty:
        raise TrainingError(
            f"dataset {spec.dataset} v{spec.dataset_version} has no rows; nothing to train on"
        )
    return dataset, origin


def verify_records(
    dataset: pd.DataFrame, schema: Schema, spec: JobSpec, origin: list[tuple[str, int]]
) -> list[str]:
    """Recompute every record id and the Merkle root; return the ids in dataset order."""
    claimed = [str(v) for v in dataset["record_id"].tolist()]
    actual = record_ids(dataset[list(schema.names)], schema)
    for row, (have, want) in enumerate(zip(claimed, actual, strict=True)):
        if have != want:
            file, local = origin[row]
            raise IntegrityError(
                f"row {row} ({file}, row {local}, owner {dataset['owner'].iloc[row]!r}) claims record "
                f"{have[:16]}… but its content hashes to {want[:16]}…; the data was altered after "
                f"registration — fetch dataset {spec.dataset} v{spec.dataset_version} again from the store",
                row=row,
                record_id=have,
                recomputed=want,
            )
    root = merkle_root_hex([bytes.fromhex(i) for i in actual])
    if root != spec.expected_merkle_root:
        raise IntegrityError(
            f"dataset {spec.dataset} v{spec.dataset_version}: the {len(actual)} records have Merkle root "
            f"{root[:16]}…, but the job expects {spec.expected_merkle_root[:16]}…; rows were added, "
            "removed or reordered, or the wrong files were sent (a version with withdrawals needs its "
            "withdrawn_files too) — fetch the version's files again with datasets.release",
            computed=root,
            expected=spec.expected_merkle_root,
        )
    return actual


def feature_arrays(frame: pd.DataFrame, schema: Schema, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = frame[list(schema.features)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"{what}: feature columns {list(schema.features)} cannot be read as float64 ({exc}); "
            "features must be numeric and present in every row"
        ) from exc
    return x, frame[schema.label].to_numpy()


def load_validation(path: Path, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    frame = _read_table(path, "validation file")
    missing = [c for c in (*schema.features, schema.label) if c not in frame.columns]
    if missing:
        raise SchemaMismatch(
            f"validation file {path} lacks columns {missing} (has {list(frame.columns)}); it needs the "
            f"features {list(schema.features)} and the label {schema.label!r}"
        )
    if frame.empty:
        raise TrainingError(f"validation file {path} has no rows; records are valued against it")
    return feature_arrays(frame, schema, f"validation file {path}")


def shard_of(spec: JobSpec, dataset: pd.DataFrame, ids: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The rows (and their ids) that shard ``spec.shard_rank`` of ``spec.shard_count`` reads."""
    if spec.shard_count == 1:
        return dataset, ids
    start, stop = shard_bounds(len(ids), spec.shard_rank, spec.shard_count)
    return dataset.iloc[start:stop].reset_index(drop=True), ids[start:stop]


def owner_usage(owners: list[str], visits: np.ndarray, values: np.ndarray) -> dict[str, OwnerUsage]:
    """Rows used (visited at least once), total visits and summed value per owner, owners sorted."""
    rows: dict[str, int] = {}
    total: dict[str, int] = {}
    value: dict[str, list[float]] = {}
    for owner, count, val in zip(owners, visits.tolist(), values.tolist(), strict=True):
        rows[owner] = rows.get(owner, 0) + (1 if count > 0 else 0)
        total[owner] = total.get(owner, 0) + int(count)
        value.setdefault(owner, []).append(val)
    return {
        o: OwnerUsage(rows_used=rows[o], visits=total[o], value=math.fsum(value[o])) for o in sorted(rows)
    }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _contributions(
    out: TrainOutput, spec: JobSpec, config: dict[str, Any], ids: list[str], validation_digest: str
) -> ValuationResult:
    if out.contributions is None:
        raise TrainingError(
            f"enclave task {spec.task!r} returned no in-run contributions; a job's receipt records one per "
            "record, so run the task with its inrun setting on and a validation set"
        )
    return inrun_result(
        out.contributions,
        params={key: config[key] for key in _INRUN_PARAMS if key in config},
        seed=spec.seed,
        record_ids=ids,
        input_digests={
            "dataset_merkle_root": spec.expected_merkle_root,
            "validation_file": validation_digest,
        },
    )


def run_job(
    spec: JobSpec,
    session_key: SigningKey,
    *,
    sequence: int,
    previous_receipt_digest: str | None,
    measurement: str,
    enclave_tasks_dir: Path,
) -> JobOutcome:
    """Run a plain ``spec`` and return its signed outcome (see the module docstring for the steps)."""
    if spec.sealed:
        raise TrainingError(
            f"job {spec.job_id} is sealed; open its shards with open_job_data inside the worker first"
        )
    try:
        schema = Schema.from_dict(spec.schema)
    except ConfigError as exc:
        raise TrainingError(f"job {spec.job_id}: the schema in the job spec is unusable ({exc})") from exc
    dataset, origin = load_dataset(spec, schema)
    ids = verify_records(dataset, schema, spec, origin)
    validation_path = Path(spec.validation_file)
    x_val, y_val = load_validation(validation_path, schema)
    validation_digest = digest_file(validation_path)

    task = load_task(Path(enclave_tasks_dir), spec.task)
    config = task.resolve_config(spec.config)
    # Every record was checked against the version's root above; a data-parallel worker then reads
    # (trains on, meters, is paid for) only its own shard's rows.
    dataset, ids = shard_of(spec, dataset, ids)
    x, y = feature_arrays(dataset, schema, f"dataset {spec.dataset} v{spec.dataset_version}")
    if spec.shard_count == 1:
        out = task.train(x, y, config, spec.seed, x_val=x_val, y_val=y_val)
    else:
        rendezvous = Rendezvous(spec.rendezvous, spec.shard_rank, spec.shard_count)
        with GlooGroup(rendezvous) as group:
            shard = DataShard(spec.shard_rank, spec.shard_count, len(origin), group.reduce)
            out = task.train(x, y, config, spec.seed, x_val=x_val, y_val=y_val, shard=shard)
    if not isinstance(out, TrainOutput):
        raise TrainingError(f"enclave task {spec.task!r} returned {type(out).__name__}, expected TrainOutput")
    if out.visits.shape[0] != len(ids):
        raise TrainingError(
            f"enclave task {spec.task!r} metered {out.visits.shape[0]} records for a dataset of {len(ids)}; "
            "the task must return one visit count per row"
        )

    valuation = _contributions(out, spec, config, ids, validation_digest)
    owners = [str(o) for o in dataset["owner"].tolist()]
    usage = owner_usage(owners, out.visits, valuation.values)
    root = records_root(zip(owners, ids, out.visits.tolist(), valuation.values.tolist(), strict=True))
    work_units = out.total_visits * out.model_cost

    output_dir = Path(spec.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / MODEL_FILE
    _write_atomic(model_path, out.model_state)
    model_digest = sha256_hex(out.model_state)
    records_path = output_dir / RECORDS_FILE
    pd.DataFrame(
        {"owner": owners, "record_id": ids, "visits": out.visits, "value": valuation.values}
    ).to_parquet(records_path, index=False)

    receipt = UsageReceipt(
        period=spec.period,
        job_id=spec.job_id,
        run_id=spec.run_id,
        provider_id=spec.provider_id,
        attestation_result_id=spec.attestation_result_id,
        assurance=spec.assurance,
        measurement=measurement,
        task=spec.task,
        dataset=spec.dataset,
        dataset_version=spec.dataset_version,
        dataset_merkle_root=spec.expected_merkle_root,
        owners=usage,
        records_root=root,
        valuation={
            "method": valuation.method,
            "params": valuation.params,
            "seed": valuation.seed,
            "digest": valuation.digest,
            "validation_digest": validation_digest,
            "validation_rows": int(x_val.shape[0]),
            "validation_accuracy": out.validation_accuracy,
            "total": valuation.total(),
        },
        work_units=work_units,
        model_digest=model_digest,
        sequence=sequence,
        previous_receipt_digest=previous_receipt_digest,
        issued_at=iso(utc(None)),
    )
    envelope = sign_receipt(session_key, receipt)
    return JobOutcome(
        receipt_envelope=envelope,
        receipt=receipt,
        model_path=str(model_path),
        model_digest=model_digest,
        work_units=work_units,
        validation_accuracy=out.validation_accuracy,
        records_path=str(records_path),
    )
