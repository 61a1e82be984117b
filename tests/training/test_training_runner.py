"""run_job: integrity checks, metering, valuation, receipt — in process, without a worker."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from training_fixtures import ENCLAVE_TASKS, FEATURES, SCHEMA, JobData, seal_job_data, write_version

from databright.crypto import SigningKey, digest_file, open_envelope, sha256_hex
from databright.errors import IntegrityError, SchemaMismatch, TrainingError
from databright.training import JobSpec, run_job
from databright.training.runner import open_job_data
from databright.training.tasks import load_task
from databright.trust.evidence import USAGE_RECEIPT_TYPE
from databright.trust.kex import KexKeyPair
from databright.trust.receipts import parse_receipt, records_root
from databright.valuation import INRUN_METHOD

MEASUREMENT = "ab" * 32


def run(spec: JobSpec, key: SigningKey | None = None):
    return run_job(
        spec,
        key or SigningKey.from_seed(b"session"),
        sequence=0,
        previous_receipt_digest=None,
        measurement=MEASUREMENT,
        enclave_tasks_dir=ENCLAVE_TASKS,
    )


def knn_utility(z: np.ndarray, y: np.ndarray, zv: np.ndarray, yv: np.ndarray, k: int) -> float:
    """U(all records): mean over validation points of the label-match share among the k nearest."""
    total = 0.0
    for point, label in zip(zv, yv, strict=True):
        dist = ((z - point) ** 2).sum(axis=1)
        nearest = np.argsort(dist, kind="stable")[:k]
        total += float(np.sum(y[nearest] == label)) / k
    return total / len(zv)


def test_happy_path_receipt_model_and_values(job_data: JobData, tmp_path: Path) -> None:
    key = SigningKey.from_seed(b"session")
    out_dir = tmp_path / "out"
    outcome = run(job_data.spec(out_dir), key)
    frame = job_data.frame
    n, epochs = len(frame), 5

    # The envelope is signed by the session key and carries exactly the returned receipt.
    open_envelope(outcome.receipt_envelope, USAGE_RECEIPT_TYPE, key.public_key)
    receipt = parse_receipt(outcome.receipt_envelope)
    assert receipt == outcome.receipt
    assert receipt.measurement == MEASUREMENT
    assert receipt.dataset_merkle_root == job_data.merkle_root
    assert (receipt.sequence, receipt.previous_receipt_digest) == (0, None)
    assert receipt.assurance == "simulated"

    # Every record read `epochs` times; work units = visits × model cost (9).
    counts = frame["owner"].value_counts()
    assert sorted(receipt.owners) == ["alice", "bob", "carol"]
    for owner, usage in receipt.owners.items():
        assert usage.rows_used == counts[owner]
        assert usage.visits == counts[owner] * epochs
    assert outcome.work_units == receipt.work_units == n * epochs * 9

    # The model file is what the receipt names.
    assert Path(outcome.model_path) == out_dir / "model.pt"
    assert digest_file(Path(outcome.model_path)) == outcome.model_digest == receipt.model_digest

    # Values: the task's in-run contributions, one per record, exactly as the task computed them.
    x = frame[FEATURES].to_numpy()
    y = frame["label"].to_numpy()
    xv, yv = job_data.validation[FEATURES].to_numpy(), job_data.validation["label"].to_numpy()
    task = load_task(ENCLAVE_TASKS, "tabular_logreg")
    direct = task.train(x, y, task.resolve_config({"epochs": 5}), 11, x_val=xv, y_val=yv)
    records = pd.read_parquet(outcome.records_path)
    assert records["record_id"].tolist() == frame["record_id"].tolist()
    assert records["owner"].tolist() == frame["owner"].tolist()
    assert records["visits"].tolist() == [epochs] * n
    assert direct.contributions is not None
    assert np.array_equal(records["value"].to_numpy(), direct.contributions)  # bit-identical
    for owner, usage in receipt.owners.items():
        mine = records.loc[records["owner"] == owner, "value"]
        assert math.isclose(usage.value, math.fsum(mine), abs_tol=1e-15)

    # The receipt's records root is re-derivable from the published leaves.
    rows = zip(records["owner"], records["record_id"], records["visits"], records["value"], strict=True)
    assert records_root(rows) == receipt.records_root
    assert receipt.valuation["method"] == INRUN_METHOD
    assert receipt.valuation["params"] == {
        "epochs": 5,
        "batch_size": 32,
        "learning_rate": 0.1,
        "weight_decay": 1e-4,
    }
    assert receipt.valuation["seed"] == 11
    assert receipt.valuation["validation_digest"] == digest_file(job_data.validation_path)
    assert receipt.valuation["validation_accuracy"] == outcome.validation_accuracy > 0.7


def test_same_spec_same_model_and_values(job_data: JobData, tmp_path: Path) -> None:
    first = run(job_data.spec(tmp_path / "a"))
    second = run(job_data.spec(tmp_path / "b"))
    assert first.model_digest == second.model_digest
    assert first.receipt.records_root == second.receipt.records_root
    assert first.receipt.valuation["digest"] == second.receipt.valuation["digest"]


def test_tampered_record_is_refused(job_data: JobData, tmp_path: Path) -> None:
    tampered = job_data.frame.copy()
    f2 = tampered["f2"].to_numpy(dtype=float, copy=True)
    f2[73] += 1.0  # row 3 of the second file
    tampered["f2"] = f2
    files = write_version(tmp_path / "tampered", tampered, split=70)
    spec = job_data.spec(tmp_path / "out", data_files=tuple(str(p) for p in files))
    with pytest.raises(IntegrityError, match=r"row 73 \(.*part-1.parquet, row 3, owner 'bob'\)") as info:
        run(spec)
    assert info.value.context["record_id"] == job_data.frame.loc[73, "record_id"]
    assert not (tmp_path / "out").exists()


def test_wrong_merkle_root_is_refused(job_data: JobData, tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="Merkle root"):
        run(job_data.spec(tmp_path / "out", expected_merkle_root="0" * 64))


def test_reordered_rows_change_the_root(job_data: JobData, tmp_path: Path) -> None:
    # Each row still hashes to its own id, but the version is a sequence: order is part of it.
    swapped = job_data.frame.iloc[[1, 0, *range(2, len(job_data.frame))]].reset_index(drop=True)
    files = write_version(tmp_path / "swapped", swapped, split=70)
    with pytest.raises(IntegrityError, match="reordered"):
        run(job_data.spec(tmp_path / "out", data_files=tuple(str(p) for p in files)))


def test_dropped_file_changes_the_root(job_data: JobData, tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="Merkle root"):
        run(job_data.spec(tmp_path / "out", data_files=(str(job_data.files[0]),)))


def test_missing_columns_are_refused(job_data: JobData, tmp_path: Path) -> None:
    broken = tmp_path / "validation.parquet"
    job_data.validation.drop(columns=["f3"]).to_parquet(broken)
    with pytest.raises(SchemaMismatch, match=r"lacks columns \['f3'\]"):
        run(job_data.spec(tmp_path / "out", validation_file=str(broken)))
    no_owner = tmp_path / "no-owner.parquet"
    job_data.frame.drop(columns=["owner"]).to_parquet(no_owner)
    with pytest.raises(SchemaMismatch, match="owner"):
        run(job_data.spec(tmp_path / "out", data_files=(str(no_owner),)))


def test_unknown_config_and_missing_files_are_refused(job_data: JobData, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="'epoch' is not a setting"):
        run(job_data.spec(tmp_path / "out", config={"epoch": 2}))
    with pytest.raises(TrainingError, match="does not exist"):
        run(job_data.spec(tmp_path / "out", validation_file=str(tmp_path / "nope.csv")))


def test_a_run_without_in_run_contributions_is_refused(job_data: JobData, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="returned no in-run contributions"):
        run(job_data.spec(tmp_path / "a", config={"epochs": 5, "inrun": False}))
    assert not (tmp_path / "a" / "model.pt").exists()


def test_training_settings_are_recorded_with_the_contributions(job_data: JobData, tmp_path: Path) -> None:
    base = run(job_data.spec(tmp_path / "a"))
    slower = run(job_data.spec(tmp_path / "b", config={"epochs": 5, "learning_rate": 0.05}))
    assert slower.receipt.valuation["params"]["learning_rate"] == 0.05
    assert slower.receipt.valuation["digest"] != base.receipt.valuation["digest"]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"data_files": ()}, "data_files"),
        ({"data_files": ("relative.parquet",)}, "relative path"),
        ({"expected_merkle_root": "xyz"}, "64 lowercase hex"),
        ({"assurance": "trusted"}, "assurance"),
        ({"seed": -1}, "seed"),
        ({"output_dir": "out"}, "output_dir"),
        ({"job_id": ""}, "job_id"),
    ],
)
def test_job_spec_validation(job_data: JobData, tmp_path: Path, changes, fragment: str) -> None:
    base = job_data.spec(tmp_path / "out")
    with pytest.raises(TrainingError, match=fragment):
        replace(base, **changes)


def test_job_spec_is_plain_and_picklable(job_data: JobData, tmp_path: Path) -> None:
    import pickle

    spec = job_data.spec(tmp_path / "out")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.schema == SCHEMA.to_dict()
    assert sha256_hex(pickle.dumps(spec.data_files))  # tuple of str, not Paths
    assert all(isinstance(p, str) for p in spec.data_files)


# --- sealed jobs -------------------------------------------------------------------------------


def _sealed(job_data: JobData, tmp_path: Path) -> tuple[JobSpec, KexKeyPair]:
    data = seal_job_data(job_data, tmp_path / "workspace")
    session, kex = SigningKey.from_seed(b"session"), KexKeyPair.generate()
    release = data.release(kex.publish(session, "ar-test"), session.public_key.hex)
    return data.spec(job_data, tmp_path / "out", release), kex


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"data_files": ("/abs/part.parquet",)}, "names both sealed shards and plaintext"),
        ({"key_release": None}, "key_release is None"),
        ({"shards": ({"name": "x"},)}, r"shards\[0\] is a dict"),
    ],
)
def test_sealed_job_spec_validation(job_data: JobData, tmp_path: Path, changes, fragment: str) -> None:
    spec, _ = _sealed(job_data, tmp_path)
    assert spec.sealed and spec.data_files == ()
    with pytest.raises(TrainingError, match=fragment):
        replace(spec, **changes)
    relative = replace(spec.shards[0], path="datasets/tabular/v1/records.parquet.sealed")
    with pytest.raises(TrainingError, match=r"shards\[0\]\.path is the relative path"):
        replace(spec, shards=(relative, spec.shards[1]))


def test_a_sealed_job_trains_exactly_like_the_plaintext(job_data: JobData, tmp_path: Path) -> None:
    spec, kex = _sealed(job_data, tmp_path)
    with pytest.raises(TrainingError, match="is sealed; open its shards"):
        run(spec)
    opened = open_job_data(spec, kex, tmp_path / "private")
    assert not opened.sealed and opened.key_release is None
    assert [Path(f).read_bytes() for f in opened.data_files] == [f.read_bytes() for f in job_data.files]
    sealed_run = run(replace(opened, output_dir=str(tmp_path / "a")))
    plain_run = run(replace(job_data.spec(tmp_path / "b"), dataset="tabular", dataset_version=2))
    for field in ("records_root", "model_digest", "work_units", "owners", "dataset_merkle_root"):
        assert getattr(sealed_run.receipt, field) == getattr(plain_run.receipt, field), field
    assert sealed_run.receipt.valuation["digest"] == plain_run.receipt.valuation["digest"]


def test_open_job_data_refuses_plain_specs_and_mismatched_releases(job_data: JobData, tmp_path: Path) -> None:
    spec, kex = _sealed(job_data, tmp_path)
    with pytest.raises(TrainingError, match="names plaintext data files"):
        open_job_data(job_data.spec(tmp_path / "out"), kex, tmp_path / "p0")
    with pytest.raises(
        IntegrityError, match="released under 'simulated' attestation, the job says 'hardware'"
    ):
        open_job_data(replace(spec, assurance="hardware"), kex, tmp_path / "p1")
    with pytest.raises(IntegrityError, match=r"is for 'tabular' v2.*but the job is 'tabular' v3"):
        open_job_data(replace(spec, dataset_version=3), kex, tmp_path / "p2")
    with pytest.raises(IntegrityError, match="was released to X25519 key"):
        open_job_data(spec, KexKeyPair.generate(), tmp_path / "p3")
    with pytest.raises(IntegrityError, match="not a key release"):
        open_job_data(replace(spec, key_release={"keys": []}), kex, tmp_path / "p4")
    assert not list(tmp_path.glob("p*/**/*.parquet"))  # nothing decrypted was left behind
