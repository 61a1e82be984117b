"""Helpers for the training tests: a separable dataset and a registered-looking version on disk,
plain (for ``run_job`` in-process) or sealed with a key release (for a worker process)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from databright.config import PROJECT_ROOT
from databright.crypto import PublicKey, digest_file, merkle_root_hex, open_envelope
from databright.datasets.canonical import record_ids
from databright.datasets.contracts import Schema
from databright.training.spec import JobSpec
from databright.trust.kex import KEX_KEY_TYPE, KeyRelease, wrap_to_session
from databright.trust.sealing import DataKey, SealedShard, data_key_id, seal_version_files

ENCLAVE_TASKS = PROJECT_ROOT / "enclave_tasks"
FEATURES = [f"f{i}" for i in range(8)]
SCHEMA = Schema.from_dict(
    {
        "columns": [{"name": f, "dtype": "float", "nullable": False} for f in FEATURES]
        + [{"name": "label", "dtype": "int", "nullable": False}],
        "features": FEATURES,
        "label": "label",
    }
)


def separable(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """A linearly separable binary problem in 8 features, with a margin around the boundary."""
    weights = np.array([1.5, -2.0, 1.0, 0.5, 0.0, 0.0, -1.0, 0.75])
    x = rng.normal(size=(4 * n, 8)).round(4)
    margin = x @ weights
    keep = np.flatnonzero(np.abs(margin) > 0.5)[:n]
    frame = pd.DataFrame(x[keep], columns=FEATURES)
    frame["label"] = (margin[keep] > 0).astype(np.int64)
    return frame


@dataclass(frozen=True)
class JobData:
    files: tuple[Path, ...]
    frame: pd.DataFrame  # the whole version: schema columns + record_id + owner
    merkle_root: str
    validation: pd.DataFrame
    validation_path: Path

    def spec(self, output_dir: Path, **changes: Any) -> JobSpec:
        base = JobSpec(
            job_id="job-1",
            period="2026-11",
            run_id="run-1",
            provider_id="prov-1",
            task="tabular_logreg",
            dataset="tabular",
            dataset_version=1,
            data_files=tuple(str(p) for p in self.files),
            expected_merkle_root=self.merkle_root,
            schema=SCHEMA.to_dict(),
            validation_file=str(self.validation_path),
            config={"epochs": 5},
            seed=11,
            attestation_result_id="ar-test",
            assurance="simulated",
            output_dir=str(output_dir),
        )
        return replace(base, **changes)


@dataclass(frozen=True)
class SealedJobData:
    """The job data as a sealed two-version dataset (``tabular`` v1, v2): shards only, no plaintext."""

    shards: tuple[SealedShard, ...]
    keys: dict[int, DataKey]
    dataset: str = "tabular"
    version: int = 2

    def release(
        self,
        kex_envelope: dict[str, Any],
        session_public_key: str,
        *,
        result_id: str = "ar-test",
        task: str = "tabular_logreg",
        assurance: str = "simulated",
    ) -> KeyRelease:
        """What the key service would release: every data key wrapped to the session's X25519 key."""
        payload = open_envelope(kex_envelope, KEX_KEY_TYPE, PublicKey.from_hex(session_public_key))
        recipient = json.loads(payload)["x25519_public_key"]
        keys = tuple(
            wrap_to_session(self.keys[v], recipient, result_id=result_id, assurance=assurance)
            for v in sorted(self.keys)
        )
        released_at = "2026-11-03T12:00:00Z"
        return KeyRelease(
            "kr-test", self.dataset, self.version, task, result_id, "prov-1", assurance, released_at, keys
        )

    def spec(self, job_data: JobData, output_dir: Path, release: KeyRelease, **changes: Any) -> JobSpec:
        plain = job_data.spec(output_dir, dataset=self.dataset, task=release.task)
        sealed = replace(
            plain,
            data_files=(),
            dataset_version=self.version,
            shards=self.shards,
            key_release=release.to_dict(),
        )
        return replace(sealed, **changes)


def seal_job_data(job_data: JobData, workspace: Path) -> SealedJobData:
    """Each of the two files as the delta of its own version, sealed under a random key; the
    plaintext is removed, so a worker can only train from what it decrypts."""
    shards, keys = [], {}
    for version, src in enumerate(job_data.files, start=1):
        rel = f"datasets/tabular/v{version}/records.parquet"
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, workspace / rel)
        raw = os.urandom(32)
        keys[version] = DataKey("tabular", version, data_key_id(raw), raw)
        digest = digest_file(workspace / rel)
        (sealed,) = seal_version_files(workspace, {rel: digest}, keys[version], remove_plaintext=True).files
        shards.append(SealedShard(rel, str(sealed.path), version, digest))
    return SealedJobData(tuple(shards), keys)


def write_version(folder: Path, frame: pd.DataFrame, split: int) -> tuple[Path, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    first, second = folder / "part-0.parquet", folder / "part-1.parquet"
    frame.iloc[:split].to_parquet(first, index=False)
    frame.iloc[split:].to_parquet(second, index=False)
    return first, second


def build_job_data(folder: Path, n: int = 120, n_val: int = 60, seed: int = 3) -> JobData:
    """A version of ``n`` rows owned by alice (1/2), bob (1/3) and carol, in two Parquet files."""
    rng = np.random.default_rng(seed)
    frame = separable(rng, n)
    frame["record_id"] = record_ids(frame, SCHEMA)
    frame["owner"] = ["alice"] * (n // 2) + ["bob"] * (n // 3) + ["carol"] * (n - n // 2 - n // 3)
    files = write_version(folder / "version", frame, split=70 * n // 120)
    root = merkle_root_hex([bytes.fromhex(i) for i in frame["record_id"]])
    validation = separable(rng, n_val)
    validation_path = folder / "validation.csv"
    validation.to_csv(validation_path, index=False)
    return JobData(files, frame, root, validation, validation_path)
