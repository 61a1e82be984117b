"""run_value: the value enclave task checks what it values, values it exactly and signs the result."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from training_fixtures import ENCLAVE_TASKS, FEATURES, JobData

from databright.crypto import SigningKey, digest_json, open_envelope
from databright.errors import IntegrityError, TrainingError
from databright.training import run_job
from databright.training.tasks import load_task, load_value_task
from databright.training.value_job import ValueSpec, run_value
from databright.trust.evidence import VALUATION_RECEIPT_TYPE
from databright.trust.valuation_receipts import parse_valuation_receipt, values_root
from databright.valuation import KNNShapley, RecordGroups, ReplicationRobust

KEY = SigningKey.from_seed(b"value session")
MEASUREMENT = "cd" * 32


@pytest.fixture
def trained(job_data: JobData, tmp_path: Path):
    outcome = run_job(
        job_data.spec(tmp_path / "train"),
        SigningKey.from_seed(b"train session"),
        sequence=0,
        previous_receipt_digest=None,
        measurement="ab" * 32,
        enclave_tasks_dir=ENCLAVE_TASKS,
    )
    return outcome


def value_spec(job_data: JobData, trained, out: Path, **changes) -> ValueSpec:
    fields = {
        "data": job_data.spec(out, task="knn_shapley", config={}, seed=0),
        "model_file": trained.model_path,
        "model_digest": trained.model_digest,
        "usage_receipt_digest": digest_json(trained.receipt_envelope),
        **changes,
    }
    return ValueSpec(**fields)


def run(spec: ValueSpec, *, sequence: int = 0, previous: str | None = None):
    return run_value(
        spec,
        KEY,
        sequence=sequence,
        previous_receipt_digest=previous,
        measurement=MEASUREMENT,
        enclave_tasks_dir=ENCLAVE_TASKS,
    )


def standardised(job_data: JobData, model_path: str) -> tuple[np.ndarray, np.ndarray]:
    state = torch.load(io.BytesIO(Path(model_path).read_bytes()), weights_only=True)
    mean, std = state["feature_mean"].numpy(), state["feature_std"].numpy()
    x = job_data.frame[FEATURES].to_numpy(dtype=np.float64)
    xv = job_data.validation[FEATURES].to_numpy(dtype=np.float64)
    return (x - mean) / std, (xv - mean) / std


def test_values_are_exact_knn_shapley_in_the_models_space_and_signed(job_data, trained, tmp_path):
    outcome = run(value_spec(job_data, trained, tmp_path / "value"))
    open_envelope(outcome.receipt_envelope, VALUATION_RECEIPT_TYPE, KEY.public_key)
    receipt = parse_valuation_receipt(outcome.receipt_envelope)
    assert receipt == outcome.receipt
    usage = trained.receipt
    assert (receipt.job_id, receipt.dataset_merkle_root, receipt.model_digest) == (
        usage.job_id,
        usage.dataset_merkle_root,
        usage.model_digest,
    )
    assert receipt.usage_receipt_digest == digest_json(trained.receipt_envelope)
    assert receipt.validation_digest == usage.valuation["validation_digest"]
    assert receipt.measurement == MEASUREMENT and receipt.task == "knn_shapley"
    assert receipt.params["embedding"] == "model feature standardisation"

    x, xv = standardised(job_data, trained.model_path)
    frame = job_data.frame
    expected = KNNShapley(k=5).values(
        x, frame["label"].to_numpy(), xv, job_data.validation["label"].to_numpy()
    )
    table = pd.read_parquet(outcome.values_path)
    assert table["record_id"].tolist() == frame["record_id"].tolist()
    assert np.array_equal(table["value"].to_numpy(), expected)  # bit-identical
    rows = zip(table["owner"], table["record_id"], table["value"], strict=True)
    assert receipt.values_root == values_root(rows)
    for owner, part in receipt.owners.items():
        mine = table[table["owner"] == owner]["value"]
        assert part.records == len(mine)
        assert part.value == pytest.approx(float(mine.sum()), abs=1e-15)


def test_the_same_inputs_give_the_same_values_and_the_chain_is_carried(job_data, trained, tmp_path):
    first = run(value_spec(job_data, trained, tmp_path / "a"))
    second = run(value_spec(job_data, trained, tmp_path / "b"), sequence=1, previous="ef" * 32)
    assert first.receipt.valuation_digest == second.receipt.valuation_digest
    assert first.receipt.values_root == second.receipt.values_root
    assert (second.receipt.sequence, second.receipt.previous_receipt_digest) == (1, "ef" * 32)


def test_near_duplicate_groups_are_valued_as_one_player(job_data, trained, tmp_path):
    ids = job_data.frame["record_id"].tolist()
    owners = job_data.frame["owner"].tolist()
    groups = ((ids[0], ids[1]), (ids[2], ids[3], ids[4]))
    outcome = run(value_spec(job_data, trained, tmp_path / "value", near_duplicate_groups=groups))
    assert outcome.receipt.near_duplicate_groups == 2
    assert outcome.receipt.method.endswith("+replication-robust")
    x, xv = standardised(job_data, trained.model_path)
    robust = ReplicationRobust(KNNShapley(k=5), RecordGroups(ids, owners, [list(g) for g in groups]))
    expected = robust.values(
        x, job_data.frame["label"].to_numpy(), xv, job_data.validation["label"].to_numpy()
    )
    assert np.array_equal(pd.read_parquet(outcome.values_path)["value"].to_numpy(), expected)


def test_a_model_that_is_not_the_receipts_is_refused(job_data, trained, tmp_path):
    with pytest.raises(IntegrityError, match="usage receipt of job job-1 signed"):
        run(value_spec(job_data, trained, tmp_path / "value", model_digest="00" * 32))


def test_altered_data_is_refused_before_anything_is_valued(job_data, trained, tmp_path):
    spec = value_spec(job_data, trained, tmp_path / "value")
    with pytest.raises(IntegrityError, match="Merkle root"):
        run(
            ValueSpec(
                **{
                    **spec.__dict__,
                    "data": job_data.spec(
                        tmp_path / "v", task="knn_shapley", config={}, expected_merkle_root="00" * 32
                    ),
                }
            )
        )
    assert not (tmp_path / "v" / "values.parquet").exists()


def test_a_train_task_is_not_a_value_task_and_back():
    with pytest.raises(TrainingError, match="is a train task, but a value task was asked for"):
        load_value_task(ENCLAVE_TASKS, "tabular_logreg")
    with pytest.raises(TrainingError, match="is a value task, but a train task was asked for"):
        load_task(ENCLAVE_TASKS, "knn_shapley")


@pytest.mark.parametrize(
    ("config", "message"),
    [({"k": 0}, "k=0"), ({"split": "votes"}, "split='votes'"), ({"replication_robust": 1}, "wrong type")],
)
def test_bad_value_config_is_refused(job_data, trained, tmp_path, config, message):
    spec = value_spec(job_data, trained, tmp_path / "value")
    bad = ValueSpec(
        **{**spec.__dict__, "data": job_data.spec(tmp_path / "v", task="knn_shapley", config=config)}
    )
    with pytest.raises(TrainingError, match=message):
        run(bad)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_file": "model.pt"}, "absolute path"),
        ({"usage_receipt_digest": "xyz"}, "usage_receipt_digest"),
        ({"near_duplicate_groups": "ab"}, "near_duplicate_groups"),
    ],
)
def test_value_spec_validation(job_data, trained, tmp_path, changes, message):
    with pytest.raises(TrainingError, match=message):
        value_spec(job_data, trained, tmp_path / "value", **changes)
