"""The tabular_mlp enclave task: determinism, metering, model cost, learning, exact in-run values,
refused inputs, and real jobs — in process and on an attested local pool."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from training_fixtures import ENCLAVE_TASKS, FEATURES, JobData, reference_sgd, seal_job_data, separable

from databright.config import Settings
from databright.crypto import SigningKey
from databright.db import ExchangeDB
from databright.errors import TrainingError
from databright.training import TrainOutput, load_task, run_job
from databright.trust.measurement import measure_task

TASK = "tabular_mlp"
CONFIG: dict[str, Any] = {
    "hidden": 16,
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 0.1,
    "weight_decay": 1e-4,
    "model_cost": 161,
    "inrun": True,
}
# A job's epochs: 120 rows in 4 batches, enough steps for the MLP to separate the fixture's data.
EPOCHS = 20
MODEL_KEYS = ("hidden.weight", "hidden.bias", "output.weight", "output.bias")


@pytest.fixture(scope="module")
def task():
    return load_task(ENCLAVE_TASKS, TASK)


def arrays(frame) -> tuple[np.ndarray, np.ndarray]:
    return frame[FEATURES].to_numpy(), frame["label"].to_numpy()


def load_state(out: TrainOutput) -> dict[str, Any]:
    import torch

    return torch.load(io.BytesIO(out.model_state), weights_only=True)


def test_manifest_defaults_and_identity(task) -> None:
    assert task.defaults == CONFIG
    assert (task.manifest["kind"], task.manifest["entrypoint"]) == ("train", "task.py")
    identity = task.identity
    assert (identity.signer_id, identity.product_id, identity.svn) == ("databright-dev", 1, 1)


def test_learns_separable_data_and_meters_every_row_read(task, rng: np.random.Generator) -> None:
    x, y = arrays(separable(rng, 300))
    xv, yv = arrays(separable(rng, 200))
    out = task.train(x, y, CONFIG, 5, x_val=xv, y_val=yv)
    assert out.validation_accuracy is not None and out.validation_accuracy > 0.9
    # Each epoch is one pass over a permutation (300 = 9 batches of 32 and one of 12): every row
    # is read exactly `epochs` times, and nothing else is counted.
    assert out.visits.dtype == np.int64
    np.testing.assert_array_equal(out.visits, np.full(300, CONFIG["epochs"]))
    assert out.total_visits == 300 * CONFIG["epochs"]
    assert out.contributions is not None and out.contributions.shape == (300,)
    # Learning from clean separable data lowers the validation loss: the credits add up to a gain.
    assert out.contributions.sum() > 0


def test_model_cost_is_the_parameter_count_per_sample(task, rng: np.random.Generator) -> None:
    x, y = arrays(separable(rng, 40))
    out = task.train(x, y, {**CONFIG, "epochs": 1}, 0)
    state = load_state(out)
    parameters = sum(state[k].numel() for k in MODEL_KEYS)
    # 8 features → 16 hidden → 1: 16·8 + 16 weights and biases in, 16 + 1 out.
    assert parameters == 16 * 8 + 16 + 16 + 1 == CONFIG["model_cost"] == out.model_cost
    wide = task.train(x, y, {**CONFIG, "epochs": 1, "hidden": 4, "model_cost": 4 * 10 + 1}, 0)
    assert sum(load_state(wide)[k].numel() for k in MODEL_KEYS) == wide.model_cost == 41
    # A cost that is not the model's size would bill for work not done: refused, with the right value.
    with pytest.raises(
        TrainingError, match=r"model_cost=161 .* 8→4→1 MLP touches 41 .* set model_cost to 41"
    ):
        task.train(x, y, {**CONFIG, "hidden": 4}, 0)


def test_model_bytes_are_deterministic_and_valuable(task, rng: np.random.Generator) -> None:
    x, y = arrays(separable(rng, 80))
    xv, yv = arrays(separable(rng, 30))
    first = task.train(x, y, CONFIG, 9, x_val=xv, y_val=yv)
    second = task.train(x, y, CONFIG, 9, x_val=xv, y_val=yv)
    assert first.model_state == second.model_state
    assert first.contributions is not None and second.contributions is not None
    assert first.contributions.tobytes() == second.contributions.tobytes()
    assert task.train(x, y, CONFIG, 10).model_state != first.model_state
    # In-run valuation only reads the weights: the same bytes with it off.
    assert (
        task.train(x, y, {**CONFIG, "inrun": False}, 9, x_val=xv, y_val=yv).model_state == first.model_state
    )

    # What knn_shapley reads: float64 feature_mean / feature_std of the training set (std > 0).
    state = load_state(first)
    assert set(state) == {*MODEL_KEYS, "feature_mean", "feature_std"}
    assert tuple(state["hidden.weight"].shape) == (16, 8) and tuple(state["output.weight"].shape) == (1, 16)
    np.testing.assert_allclose(state["feature_mean"].numpy(), x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(state["feature_std"].numpy(), x.std(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(first.embed(xv), (xv - x.mean(0)) / x.std(0), rtol=0, atol=1e-12)


def reference_training(
    x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, config: dict[str, Any], seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """The task's training loop rebuilt independently, with every record's in-run contribution
    from torch.func per-sample gradients dotted with the autograd validation gradient."""
    import torch

    mean, std = x.mean(0), x.std(0)
    z, zv = torch.from_numpy((x - mean) / std), torch.from_numpy((xv - mean) / std)
    targets, val_targets = torch.from_numpy(y.astype(np.float64)), torch.from_numpy(yv.astype(np.float64))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], config["hidden"], dtype=torch.float64),
        torch.nn.ReLU(),
        torch.nn.Linear(config["hidden"], 1, dtype=torch.float64),
    )
    values = reference_sgd(model, z, targets, zv, val_targets, config, seed)
    return {k: v.detach() for k, v in model.state_dict().items()}, values


def test_inrun_contributions_match_per_sample_autograd(task, rng: np.random.Generator) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = arrays(separable(rng, 50))
        xv, yv = arrays(separable(rng, 20))
        # A last batch of 50 − 3·14 = 8 rows, weight decay on: the uneven and regularised cases.
        config = {
            **CONFIG,
            "hidden": 6,
            "model_cost": 61,
            "epochs": 3,
            "batch_size": 14,
            "weight_decay": 0.01,
        }
        out = task.train(x, y, config, 3, x_val=xv, y_val=yv)
        weights, expected = reference_training(x, y, xv, yv, config, 3)
    finally:
        torch.set_num_threads(threads)
    state = load_state(out)
    # The same training, so the same weights at every step (the contributions are taken at them).
    for ours, theirs in (("hidden", "0"), ("output", "2")):
        for part in ("weight", "bias"):
            torch.testing.assert_close(
                state[f"{ours}.{part}"], weights[f"{theirs}.{part}"], rtol=0, atol=1e-12
            )
    assert out.contributions is not None
    assert np.abs(expected).max() > 1e-4  # the check below is not vacuous
    np.testing.assert_allclose(out.contributions, expected, rtol=0, atol=1e-10)


def test_no_validation_set_means_no_accuracy_and_no_contributions(task, rng: np.random.Generator) -> None:
    x, y = arrays(separable(rng, 30))
    out = task.train(x, y, {**CONFIG, "epochs": 1}, 0)
    assert (out.validation_accuracy, out.contributions) == (None, None)


@pytest.mark.parametrize(
    ("x", "y", "validation", "fragment"),
    [
        (np.array([["a", "b"], ["c", "d"]]), [0, 1], None, "features must be real numbers — encode"),
        (np.array([[0.0, 1.0], [np.nan, 2.0]]), [0, 1], None, r"row 1, column 0 is nan; clean the data"),
        (np.zeros((3, 2)), [0, 1, 2], None, r"labels \['2'\]; this task is binary — encode the label as 0/1"),
        (np.zeros((3, 2)), [0, 1], None, r"one label per row \(3\)"),
        (
            np.zeros((2, 2)),
            [0, 1],
            (np.zeros((2, 3)), [0, 1]),
            "x_val has 3 features, the model was trained on 2",
        ),
        (np.zeros((2, 2)), [0, 1], (np.zeros((2, 2)), None), "give both x_val and y_val"),
        (np.zeros((2, 2)), [0, 1], (np.zeros((2, 2)), [1, -1]), r"y_val has labels \['-1'\]"),
    ],
)
def test_bad_input_is_refused_with_the_fix(task, x, y, validation, fragment: str) -> None:
    x_val, y_val = validation or (None, None)
    config = {**CONFIG, "model_cost": 16 * 4 + 1}  # two features
    with pytest.raises(TrainingError, match=fragment):
        task.train(x, np.asarray(y), config, 0, x_val=x_val, y_val=y_val)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"hidden": 0}, "hidden=0"),
        ({"learning_rate": "fast"}, "learning_rate='fast'"),
        ({"inrun": 1}, "inrun=1"),
    ],
)
def test_bad_config_is_refused(task, change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TrainingError, match=fragment):
        task.train(np.zeros((4, 8)), np.array([0, 1, 0, 1]), {**CONFIG, **change}, 0)


def test_a_job_runs_and_bills_visits_times_parameters(job_data: JobData, tmp_path: Path) -> None:
    outcome = run_job(
        job_data.spec(tmp_path / "out", task=TASK, config={"epochs": EPOCHS}),
        SigningKey.from_seed(b"session"),
        sequence=0,
        previous_receipt_digest=None,
        measurement="ab" * 32,
        enclave_tasks_dir=ENCLAVE_TASKS,
    )
    n, epochs = len(job_data.frame), EPOCHS
    receipt = outcome.receipt
    assert receipt.task == TASK
    assert outcome.work_units == receipt.work_units == n * epochs * 161
    assert sum(u.visits for u in receipt.owners.values()) == n * epochs
    assert receipt.valuation["method"] == "in-run-first-order"
    assert outcome.validation_accuracy is not None and outcome.validation_accuracy > 0.9


@pytest.mark.integration
def test_a_job_on_the_attested_local_pool(
    settings: Settings, memory_db: ExchangeDB, job_data: JobData, tmp_path: Path
) -> None:
    from databright.market import Provider, list_providers, register_provider
    from databright.market.pool import LocalPool
    from databright.trust import verify_receipt

    register_provider(memory_db, Provider("prov-1", price_per_unit=3, capacity=50_000_000))
    # The pool appraises the worker against the repository's policy: this needs its measurement there.
    with LocalPool(settings, memory_db, list_providers(memory_db), task=TASK) as pool:
        (offer,) = pool.offers
        member = pool.member(offer)
        result = member.attestation
        sealed = seal_job_data(job_data, tmp_path / "workspace")
        release = sealed.release(
            member.kex_envelope, result.session_public_key, result_id=result.result_id, task=TASK
        )
        spec = sealed.spec(
            job_data,
            tmp_path / "out",
            release,
            attestation_result_id=result.result_id,
            assurance=result.assurance,
            config={"epochs": EPOCHS},
        )
        outcome = pool.run(offer, spec)
    receipt = verify_receipt(outcome.receipt_envelope, result)
    assert receipt.measurement == result.measurement == measure_task(ENCLAVE_TASKS / TASK)
    assert receipt.task == TASK and receipt.work_units == len(job_data.frame) * EPOCHS * 161
    assert outcome.validation_accuracy is not None and outcome.validation_accuracy > 0.9
