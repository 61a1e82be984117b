"""The value step inside an attested worker: check, value, sign — the numbers dividends are paid on.

A ``ValueSpec`` asks a worker attested for a *value task* (``enclave_tasks/knn_shapley``) to value
the records one completed training job read. ``run_value`` trusts nothing it is handed except its
own session key and the measurement its worker took of the task folder:

1. the dataset version is opened and checked exactly as for training (``runner.load_dataset`` and
   ``runner.verify_records``: every record id recomputed, the Merkle root compared with the job's);
2. the trained model's bytes must hash to the digest the job's usage receipt signed, and the
   validation file is digested, so the receipt names exactly what the values were computed from;
3. the task's ``value`` function values every record (``ValuationResult``), treating the version's
   near-duplicate groups as single players (``ReplicationRobust``);
4. per owner: records and summed value; a Merkle root over ``(owner, record, value)`` in dataset
   order, whose leaves are written to ``output_dir/values.parquet``;
5. a ``ValuationReceipt`` bound to the usage receipt's digest is signed by the session key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from databright.crypto import SigningKey, digest_file, sha256_hex
from databright.datasets.contracts import Schema
from databright.errors import ConfigError, IntegrityError, TrainingError
from databright.training.runner import (
    feature_arrays,
    load_dataset,
    load_validation,
    shard_of,
    verify_records,
)
from databright.training.spec import JobSpec
from databright.training.tasks import load_value_task
from databright.trust.evidence import iso, utc
from databright.trust.valuation_receipts import (
    ValuationReceipt,
    owner_values,
    sign_valuation_receipt,
    values_root,
)
from databright.valuation import ValuationResult

VALUES_FILE = "values.parquet"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ValueSpec:
    """One value job: the data part (a ``JobSpec`` whose ``task`` is the value task and whose
    ``job_id`` is the training job being valued), the trained model and the usage receipt it binds to.

    ``near_duplicate_groups`` are the version manifest's groups of record ids; each group is valued
    as one player and its value shared among its members.
    """

    data: JobSpec
    model_file: str
    model_digest: str
    usage_receipt_digest: str
    near_duplicate_groups: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.data, JobSpec):
            raise TrainingError(f"value spec data is a {type(self.data).__name__}; pass a JobSpec")
        if not isinstance(self.model_file, str) or not Path(self.model_file).is_absolute():
            raise TrainingError(
                f"value spec model_file {self.model_file!r} must be an absolute path to the trained model"
            )
        for name in ("model_digest", "usage_receipt_digest"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _HEX64.match(value):
                raise TrainingError(
                    f"value spec {name} {value!r} is not 64 lowercase hex digits; copy it from the job's "
                    "usage receipt"
                )
        groups = self.near_duplicate_groups
        if isinstance(groups, str) or not isinstance(groups, list | tuple):
            raise TrainingError(
                f"value spec near_duplicate_groups is {groups!r}; give the manifest's list of id lists"
            )
        object.__setattr__(self, "near_duplicate_groups", tuple(tuple(g) for g in groups))

    @property
    def job_id(self) -> str:
        return self.data.job_id


@dataclass(frozen=True)
class ValueOutcome:
    """What the worker returns: the signed valuation receipt and the values table (its root's leaves)."""

    receipt_envelope: dict[str, Any]
    receipt: ValuationReceipt
    values_path: str


def _model_state(spec: ValueSpec) -> bytes:
    path = Path(spec.model_file)
    if not path.is_file():
        raise TrainingError(f"model file {path} of job {spec.job_id} does not exist in the worker")
    state = path.read_bytes()
    if sha256_hex(state) != spec.model_digest:
        raise IntegrityError(
            f"model file {path} hashes to {sha256_hex(state)[:16]}…, but the usage receipt of job "
            f"{spec.job_id} signed {spec.model_digest[:16]}…; fetch the job's model from the store again",
            job_id=spec.job_id,
        )
    return state


def run_value(
    spec: ValueSpec,
    session_key: SigningKey,
    *,
    sequence: int,
    previous_receipt_digest: str | None,
    measurement: str,
    enclave_tasks_dir: Path,
) -> ValueOutcome:
    """Value the records of ``spec``'s job and return the signed outcome (see the module docstring)."""
    data = spec.data
    if data.sealed:
        raise TrainingError(
            f"value job for {spec.job_id} is sealed; open its shards with open_job_data in the worker first"
        )
    try:
        schema = Schema.from_dict(data.schema)
    except ConfigError as exc:
        raise TrainingError(f"value job for {spec.job_id}: the schema is unusable ({exc})") from exc
    dataset, origin = load_dataset(data, schema)
    ids = verify_records(dataset, schema, data, origin)
    # A shard of a data-parallel job is valued on the rows its worker read, like its usage receipt.
    dataset, ids = shard_of(data, dataset, ids)
    groups = spec.near_duplicate_groups
    if data.shard_count > 1:
        inside = set(ids)
        kept = (tuple(i for i in group if i in inside) for group in groups)
        groups = tuple(group for group in kept if len(group) > 1)
    validation_path = Path(data.validation_file)
    x_val, y_val = load_validation(validation_path, schema)
    validation_digest = digest_file(validation_path)
    model_state = _model_state(spec)

    task = load_value_task(Path(enclave_tasks_dir), data.task)
    config = task.resolve_config(data.config)
    x, y = feature_arrays(dataset, schema, f"dataset {data.dataset} v{data.dataset_version}")
    owners = [str(o) for o in dataset["owner"].tolist()]
    result = task.value(
        x,
        y,
        x_val,
        y_val,
        config=config,
        seed=data.seed,
        model_state=model_state,
        record_ids=ids,
        owners=owners,
        near_duplicate_groups=groups,
        input_digests={
            "dataset_merkle_root": data.expected_merkle_root,
            "validation_file": validation_digest,
            "model": spec.model_digest,
        },
    )
    if not isinstance(result, ValuationResult):
        raise TrainingError(
            f"value task {data.task!r} returned {type(result).__name__}, expected a ValuationResult"
        )
    if tuple(result.record_ids) != tuple(ids):
        raise TrainingError(
            f"value task {data.task!r} valued {len(result.record_ids)} records in a different order from the "
            f"{len(ids)} rows of the version; it must value every row, in dataset order"
        )
    values = np.asarray(result.values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise TrainingError(f"value task {data.task!r} returned a non-finite value; values must be finite")

    output_dir = Path(data.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    values_path = output_dir / VALUES_FILE
    pd.DataFrame({"owner": owners, "record_id": ids, "value": values}).to_parquet(values_path, index=False)
    receipt = ValuationReceipt(
        period=data.period,
        job_id=data.job_id,
        run_id=data.run_id,
        provider_id=data.provider_id,
        attestation_result_id=data.attestation_result_id,
        assurance=data.assurance,
        measurement=measurement,
        task=data.task,
        dataset=data.dataset,
        dataset_version=data.dataset_version,
        dataset_merkle_root=data.expected_merkle_root,
        usage_receipt_digest=spec.usage_receipt_digest,
        model_digest=spec.model_digest,
        validation_digest=validation_digest,
        method=result.method,
        params=dict(result.params),
        seed=result.seed,
        valuation_digest=result.digest,
        owners=owner_values(owners, values.tolist()),
        values_root=values_root(zip(owners, ids, values.tolist(), strict=True)),
        near_duplicate_groups=len(spec.near_duplicate_groups),
        sequence=sequence,
        previous_receipt_digest=previous_receipt_digest,
        issued_at=iso(utc(None)),
    )
    return ValueOutcome(
        receipt_envelope=sign_valuation_receipt(session_key, receipt),
        receipt=receipt,
        values_path=str(values_path),
    )
