"""Helpers for the training tests: a separable dataset (or synthetic images) and a registered-looking
version on disk, plain (for ``run_job`` in-process) or sealed with a key release (for a worker process)."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from databright.config import PROJECT_ROOT, Settings
from databright.crypto import PublicKey, SigningKey, digest_file, merkle_root_hex, open_envelope
from databright.datasets.canonical import record_ids
from databright.datasets.contracts import Schema, load_contract
from databright.datasets.synthetic import bar_images
from databright.db import ExchangeDB
from databright.training.runner import run_job
from databright.training.spec import JobOutcome, JobSpec
from databright.trust.kex import KEX_KEY_TYPE, KeyRelease, wrap_to_session
from databright.trust.sealing import DataKey, SealedShard, data_key_id, seal_version_files

ENCLAVE_TASKS = PROJECT_ROOT / "enclave_tasks"
IMAGE_SCHEMA = load_contract(PROJECT_ROOT / "data_contracts", "image-8x8-v1").schema
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


def images(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """``n`` 8 × 8 bar images (``image-8x8-v1``), seeded from ``rng``."""
    return bar_images(n, seed=int(rng.integers(2**32)))


def load_state(model_state: bytes) -> dict[str, Any]:
    """A task's model state (``TrainOutput.model_state``) as the state dict it saved."""
    import torch

    return torch.load(io.BytesIO(model_state), weights_only=True)


class BarrierSum:
    """``reduce`` for ``world`` ranks that are threads of one process (a ``DataShard``'s all-reduce
    without processes): each deposits its array, and every one gets the same sum. A rank that fails
    should ``barrier.abort()`` so that the others fail too instead of waiting out the timeout."""

    def __init__(self, world: int, timeout_s: float = 60.0) -> None:
        self.world = world
        self.barrier = threading.Barrier(world, timeout=timeout_s)
        self.slots: list[Any] = [None] * world

    def for_rank(self, rank: int) -> Callable[[np.ndarray], None]:
        def reduce(array: np.ndarray) -> None:
            self.slots[rank] = array.copy()
            self.barrier.wait()
            total = np.sum(self.slots, axis=0)
            self.barrier.wait()  # everyone has read the slots before the next collective fills them
            array[...] = total

        return reduce


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread, as the tasks train, restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_reproducible(
    task: Any, config: dict[str, Any], seed: int, x: Any, y: Any, xv: Any, yv: Any
) -> Any:
    """The same inputs and seed give the same model bytes and contributions, another seed another
    model, and in-run valuation (which only reads the weights) leaves the bytes alone. Returns the
    first run's output."""
    first = task.train(x, y, config, seed, x_val=xv, y_val=yv)
    second = task.train(x, y, config, seed, x_val=xv, y_val=yv)
    assert first.model_state == second.model_state
    assert first.contributions is not None and second.contributions is not None
    assert first.contributions.tobytes() == second.contributions.tobytes()
    assert task.train(x, y, config, seed + 1).model_state != first.model_state
    off = task.train(x, y, {**config, "inrun": False}, seed, x_val=xv, y_val=yv)
    assert off.model_state == first.model_state and off.contributions is None
    return first


@dataclass(frozen=True)
class JobData:
    files: tuple[Path, ...]
    frame: pd.DataFrame  # the whole version: schema columns + record_id + owner
    merkle_root: str
    validation: pd.DataFrame
    validation_path: Path
    schema: Schema = SCHEMA

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
            schema=self.schema.to_dict(),
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


def build_job_data(
    folder: Path,
    n: int = 120,
    n_val: int = 60,
    seed: int = 3,
    *,
    draw: Callable[[np.random.Generator, int], pd.DataFrame] = separable,
    schema: Schema = SCHEMA,
) -> JobData:
    """A version of ``n`` rows (from ``draw``, in ``schema``'s columns) owned by alice (1/2), bob (1/3)
    and carol, in two Parquet files, and ``n_val`` validation rows."""
    rng = np.random.default_rng(seed)
    frame = draw(rng, n)
    frame["record_id"] = record_ids(frame, schema)
    frame["owner"] = ["alice"] * (n // 2) + ["bob"] * (n // 3) + ["carol"] * (n - n // 2 - n // 3)
    files = write_version(folder / "version", frame, split=70 * n // 120)
    root = merkle_root_hex([bytes.fromhex(i) for i in frame["record_id"]])
    validation = draw(rng, n_val)
    validation_path = folder / "validation.csv"
    validation.to_csv(validation_path, index=False)
    return JobData(files, frame, root, validation, validation_path, schema)


def reference_sgd(
    model: Any,
    inputs: Any,
    targets: Any,
    val_inputs: Any,
    val_targets: Any,
    config: dict[str, Any],
    seed: int,
) -> np.ndarray:
    """A task's training loop rebuilt from torch's layers: SGD with weight decay on the mean binary
    cross-entropy of ``model`` (rows → one logit each), the job's batches, and every record's in-run
    contribution from ``torch.func`` per-sample gradients dotted with the autograd validation
    gradient. Trains ``model`` in place and returns the contributions."""
    import torch
    from torch.func import functional_call, grad, vmap

    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def sample_loss(params: dict[str, Any], row: Any, label: Any) -> Any:
        return bce(functional_call(model, params, (row[None],))[0, 0], label)

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    lr, decay, size = config["learning_rate"], config["weight_decay"], config["batch_size"]
    n = inputs.shape[0]
    values = np.zeros(n)
    shuffler = np.random.default_rng(seed)
    for _ in range(config["epochs"]):
        order = shuffler.permutation(n)
        for start in range(0, n, size):
            batch = order[start : start + size]
            index = torch.from_numpy(batch)
            params = {k: v.detach() for k, v in model.named_parameters()}
            grads = per_sample(params, inputs[index], targets[index])
            val_loss = bce(model(val_inputs).squeeze(1), val_targets)
            val_grads = torch.autograd.grad(val_loss, list(model.parameters()))
            dots = sum(
                (g.reshape(len(batch), -1) @ v.reshape(-1)).numpy()
                for g, v in zip(grads.values(), val_grads, strict=True)
            )
            np.add.at(values, batch, lr / len(batch) * dots)
            model.zero_grad()
            bce(model(inputs[index]).squeeze(1), targets[index]).backward()
            with torch.no_grad():
                for p in model.parameters():
                    assert p.grad is not None
                    p.add_(p.grad.add(p, alpha=decay), alpha=-lr)
    return values


def in_process_job(job_data: JobData, output_dir: Path, task: str, config: dict[str, Any]) -> JobOutcome:
    """``run_job`` of ``task`` on the job data in this process, under a throwaway session key."""
    return run_job(
        job_data.spec(output_dir, task=task, config=config),
        SigningKey.from_seed(b"session"),
        sequence=0,
        previous_receipt_digest=None,
        measurement="ab" * 32,
        enclave_tasks_dir=ENCLAVE_TASKS,
    )


def pool_job(
    settings: Settings, db: ExchangeDB, job_data: JobData, workspace: Path, task: str, config: dict[str, Any]
) -> tuple[Any, Any]:
    """A sealed job of ``task`` on an attested ``LocalPool`` of one provider: the pool appraises the
    worker against the repository's policy (so the task's measurement must be pinned there), the
    data keys are released to the worker's session. Returns the job's outcome and the attestation
    result it ran under."""
    from databright.market import Provider, list_providers, register_provider
    from databright.market.pool import LocalPool

    register_provider(db, Provider("prov-1", price_per_unit=3, capacity=50_000_000))
    with LocalPool(settings, db, list_providers(db), task=task) as pool:
        (offer,) = pool.offers
        member = pool.member(offer)
        result = member.attestation
        sealed = seal_job_data(job_data, workspace / "workspace")
        release = sealed.release(
            member.kex_envelope, result.session_public_key, result_id=result.result_id, task=task
        )
        spec = sealed.spec(
            job_data,
            workspace / "out",
            release,
            attestation_result_id=result.result_id,
            assurance=result.assurance,
            config=config,
        )
        return pool.run(offer, spec), result
