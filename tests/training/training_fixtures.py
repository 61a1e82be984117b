"""Helpers for the training tests: a separable dataset and a registered-looking version on disk."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from databright.config import PROJECT_ROOT
from databright.crypto import merkle_root_hex
from databright.datasets.canonical import record_ids
from databright.datasets.contracts import Schema
from databright.training.spec import JobSpec

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
