"""What a worker is asked to do (``JobSpec``) and what it hands back (``JobOutcome``).

A ``JobSpec`` crosses a process boundary into the worker, so it holds only plain, picklable
values: strings, ints, tuples, JSON-like dicts and the frozen ``SealedShard`` records. Paths are
absolute strings, because the worker never resolves anything against the exchange's working
directory or opens its database.

The data comes one of two ways. A job for an attested worker is *sealed*: ``shards`` lists the
version's sealed files and ``key_release`` (``KeyRelease.to_dict()``) carries their data keys
wrapped to the session; ``data_files`` and ``withdrawn_files`` are empty, and the worker fills them
with its private decrypted copies (``runner.open_job_data``). A *plain* spec names Parquet files in
``data_files`` directly; only ``run_job`` called in-process takes one — the worker refuses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.errors import TrainingError
from databright.trust.sealing import SealedShard

if TYPE_CHECKING:
    from databright.trust.receipts import UsageReceipt

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
ASSURANCES = ("hardware", "simulated")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TrainingError(f"job spec field {name} is {value!r}; it must be a non-empty string")
    return value


def _absolute(name: str, value: Any) -> str:
    text = _text(name, value)
    if not Path(text).is_absolute():
        raise TrainingError(
            f"job spec field {name} is the relative path {text!r}; give an absolute path, the worker "
            "does not share the exchange's working directory"
        )
    return text


@dataclass(frozen=True)
class JobSpec:
    """One training job for one worker: data, task, config, seed and where to write the model."""

    job_id: str
    period: str
    run_id: str
    provider_id: str
    task: str
    dataset: str
    dataset_version: int
    data_files: tuple[str, ...]
    expected_merkle_root: str
    schema: dict[str, Any]
    validation_file: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    attestation_result_id: str = ""
    assurance: str = "simulated"
    output_dir: str = ""
    # Parquet files of record ids the version withdrew (``datasets.release``); the runner drops them.
    withdrawn_files: tuple[str, ...] = ()
    # A sealed job: the version's shards and the data keys released to the worker's session.
    shards: tuple[SealedShard, ...] = ()
    key_release: dict[str, Any] | None = None
    # Data-parallel jobs: this worker is ``shard_rank`` of ``shard_count`` and reads only its rows
    # (``data_parallel.shard_bounds``); the workers meet at ``rendezvous`` (tcp://host:port).
    shard_rank: int = 0
    shard_count: int = 1
    rendezvous: str = ""

    @property
    def sealed(self) -> bool:
        return bool(self.shards)

    def __post_init__(self) -> None:
        for name in ("job_id", "period", "run_id", "provider_id", "task", "dataset", "attestation_result_id"):
            _text(name, getattr(self, name))
        for name in ("dataset_version", "seed", "shard_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrainingError(f"job spec field {name} is {value!r}; it must be a non-negative integer")
        files = tuple(self.data_files) if isinstance(self.data_files, list | tuple) else None
        withdrawn = tuple(self.withdrawn_files) if isinstance(self.withdrawn_files, list | tuple) else None
        shards = tuple(self.shards) if isinstance(self.shards, list | tuple) else None
        if files is None or withdrawn is None or shards is None:
            raise TrainingError(
                f"job spec data_files, withdrawn_files and shards must be lists (got {self.data_files!r}, "
                f"{self.withdrawn_files!r}, {self.shards!r})"
            )
        if shards:
            self._check_sealed(files, withdrawn, shards)
        elif not files:
            raise TrainingError(
                f"job spec data_files is {self.data_files!r}; list the dataset version's Parquet files in "
                "order, or pass its sealed shards and key release"
            )
        for index, path in enumerate(files):
            _absolute(f"data_files[{index}]", path)
        for index, path in enumerate(withdrawn):
            _absolute(f"withdrawn_files[{index}]", path)
        if not isinstance(self.expected_merkle_root, str) or not _HEX64.match(self.expected_merkle_root):
            raise TrainingError(
                f"job spec expected_merkle_root {self.expected_merkle_root!r} is not 64 lowercase hex "
                "digits; "
                "copy it from the dataset version's manifest"
            )
        if not isinstance(self.schema, dict) or not self.schema:
            raise TrainingError("job spec schema is empty; pass the dataset's Schema.to_dict()")
        _absolute("validation_file", self.validation_file)
        _absolute("output_dir", self.output_dir)
        count = self.shard_count
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= self.shard_rank < count:
            raise TrainingError(
                f"job spec shard {self.shard_rank!r} of {count!r}: the count must be a positive integer and "
                "the rank one of 0..count-1"
            )
        if not isinstance(self.config, dict):
            raise TrainingError(f"job spec config is {self.config!r}; give a mapping of overrides (or {{}})")
        if self.assurance not in ASSURANCES:
            raise TrainingError(
                f"job spec assurance {self.assurance!r} is not one of {ASSURANCES}; copy it from the "
                "attestation result"
            )
        object.__setattr__(self, "data_files", files)
        object.__setattr__(self, "withdrawn_files", withdrawn)
        object.__setattr__(self, "shards", shards)
        object.__setattr__(self, "schema", dict(self.schema))
        object.__setattr__(self, "config", dict(self.config))

    def _check_sealed(
        self, files: tuple[str, ...], withdrawn: tuple[str, ...], shards: tuple[Any, ...]
    ) -> None:
        if files or withdrawn:
            raise TrainingError(
                f"job spec {self.job_id} names both sealed shards and plaintext data files; a sealed job "
                "leaves data_files and withdrawn_files empty — the worker fills them when it decrypts"
            )
        for index, shard in enumerate(shards):
            if not isinstance(shard, SealedShard):
                raise TrainingError(
                    f"job spec shards[{index}] is a {type(shard).__name__}; pass sealing.version_shards(...)"
                )
            _absolute(f"shards[{index}].path", shard.path)
        if not isinstance(self.key_release, dict):
            raise TrainingError(
                f"job spec {self.job_id} has sealed shards but key_release is {self.key_release!r}; pass "
                "KeyService.release(...).to_dict(), the data keys released to the worker's session"
            )


@dataclass(frozen=True)
class JobOutcome:
    """What the worker returns: the signed receipt, the model file and its digest, and headline numbers.

    ``records_path`` is a Parquet table (owner, record_id, visits, value) in dataset order: the leaves
    of the receipt's ``records_root``, so anyone can re-derive and check it.
    """

    receipt_envelope: dict[str, Any]
    receipt: UsageReceipt
    model_path: str
    model_digest: str
    work_units: int
    validation_accuracy: float | None
    records_path: str = ""
