"""The small_cnn enclave task: determinism, metering, model cost, learning, exact in-run values,
data-parallel training on two simulated ranks, refused inputs, and real jobs — in process and on an
attested local pool."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from training_fixtures import (
    ENCLAVE_TASKS,
    BarrierSum,
    JobData,
    assert_reproducible,
    in_process_job,
    load_state,
    one_torch_thread,
    pool_job,
    reference_sgd,
)

from databright.config import Settings
from databright.datasets.synthetic import bar_images
from databright.db import ExchangeDB
from databright.errors import TrainingError
from databright.training import TrainOutput, load_task
from databright.training.data_parallel import DataShard
from databright.trust.measurement import measure_task

TASK = "small_cnn"
CONFIG: dict[str, Any] = {
    "image_height": 8,
    "image_width": 8,
    "channels": 4,
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 0.5,
    "weight_decay": 1e-4,
    "model_cost": 45,
    "inrun": True,
}
# A job's epochs: 120 images in 4 batches, enough steps for the filters to find the bars.
EPOCHS = 20
MODEL_KEYS = ("conv.weight", "conv.bias", "output.weight", "output.bias")
# Two ranks add each step's gradient in two parts, one rank adds it whole: the models differ only by
# the order of floating-point additions, compounded over the steps (measured: ~1e-15 relative).
DATA_PARALLEL_RTOL = 1e-10


@pytest.fixture(scope="module")
def task():
    return load_task(ENCLAVE_TASKS, TASK)


def arrays(n: int, seed: int, height: int = 8, width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    frame = bar_images(n, seed=seed, height=height, width=width)
    return frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()


def test_manifest_defaults_and_identity(task) -> None:
    assert task.defaults == CONFIG
    assert (task.manifest["kind"], task.manifest["entrypoint"]) == ("train", "task.py")
    identity = task.identity
    assert (identity.signer_id, identity.product_id, identity.svn) == ("databright-dev", 1, 1)


def test_learns_the_bars_and_meters_every_row_read(task) -> None:
    x, y = arrays(300, seed=1)
    xv, yv = arrays(200, seed=2)
    out = task.train(x, y, CONFIG, 5, x_val=xv, y_val=yv)
    # Chance is 1/2 (the labels are balanced); no single pixel tells a bar's direction.
    assert out.validation_accuracy is not None and out.validation_accuracy > 0.9
    # Each epoch is one pass over a permutation (300 = 9 batches of 32 and one of 12): every row
    # is read exactly `epochs` times, and nothing else is counted.
    assert out.visits.dtype == np.int64
    np.testing.assert_array_equal(out.visits, np.full(300, CONFIG["epochs"]))
    assert out.contributions is not None and out.contributions.shape == (300,)
    # Learning from clean images lowers the validation loss: the credits add up to a gain.
    assert out.contributions.sum() > 0


def test_model_cost_is_the_parameter_count_per_sample(task) -> None:
    x, y = arrays(40, seed=3)
    out = task.train(x, y, {**CONFIG, "epochs": 1}, 0)
    state = load_state(out.model_state)
    # 4 filters of 3 × 3 and their biases, 4 output weights and a bias: 4 × (9 + 2) + 1.
    assert sum(state[k].numel() for k in MODEL_KEYS) == 4 * 9 + 4 + 4 + 1 == CONFIG["model_cost"] == 45
    assert out.model_cost == 45
    # Global average pooling: the count does not depend on the image size, only on the filters.
    xw, yw = arrays(40, seed=3, height=5, width=7)
    wide = task.train(
        xw,
        yw,
        {**CONFIG, "epochs": 1, "image_height": 5, "image_width": 7, "channels": 2, "model_cost": 23},
        0,
    )
    assert sum(load_state(wide.model_state)[k].numel() for k in MODEL_KEYS) == wide.model_cost == 23
    # A cost that is not the model's size would bill for work not done: refused, with the right value.
    with pytest.raises(
        TrainingError, match=r"model_cost=45 but a CNN of 2 3×3 filters touches 23 .* set model_cost to 23"
    ):
        task.train(x, y, {**CONFIG, "channels": 2}, 0)


def test_model_bytes_are_deterministic_and_valuable(task) -> None:
    x, y = arrays(80, seed=4)
    xv, yv = arrays(30, seed=5)
    first = assert_reproducible(task, CONFIG, 9, x, y, xv, yv)

    # What knn_shapley reads: float64 feature_mean / feature_std per column — here one mean and one
    # deviation over every pixel, repeated, since a filter must see every position scaled alike.
    state = load_state(first.model_state)
    assert set(state) == {*MODEL_KEYS, "feature_mean", "feature_std", "image_shape"}
    assert tuple(state["conv.weight"].shape) == (4, 1, 3, 3) and tuple(state["output.weight"].shape) == (1, 4)
    assert state["image_shape"].tolist() == [8, 8]
    np.testing.assert_allclose(state["feature_mean"].numpy(), np.full(64, x.mean()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(state["feature_std"].numpy(), np.full(64, x.std()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(first.embed(xv), (xv - x.mean()) / x.std(), rtol=0, atol=1e-12)


def reference_training(
    x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, config: dict[str, Any], seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """The task's model rebuilt from torch's layers, trained by ``reference_sgd`` (per-sample
    gradients from torch.func): its final weights and every record's in-run contribution."""
    import torch

    shape = (-1, 1, config["image_height"], config["image_width"])
    mean, std = x.mean(), x.std()
    channels = config["channels"]
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, dtype=torch.float64),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(channels, 1, dtype=torch.float64),
    )
    # torch's default initialisation, U(±1/√fan_in), drawn from the job's seed in parameter order.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter, fan_in in zip(model.parameters(), (9, 9, channels, channels), strict=True):
            parameter.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)
    values = reference_sgd(
        model,
        torch.from_numpy((x - mean) / std).reshape(shape),
        torch.from_numpy(y.astype(np.float64)),
        torch.from_numpy((xv - mean) / std).reshape(shape),
        torch.from_numpy(yv.astype(np.float64)),
        config,
        seed,
    )
    return {k: v.detach() for k, v in model.state_dict().items()}, values


def test_inrun_contributions_match_per_sample_autograd(task) -> None:
    import torch

    with one_torch_thread():
        # 5 × 6 images (not square: the pixels are read row-major), a last batch of 50 − 3·14 = 8
        # rows, weight decay on: the uneven and regularised cases.
        x, y = arrays(50, seed=6, height=5, width=6)
        xv, yv = arrays(20, seed=7, height=5, width=6)
        config = {
            **CONFIG,
            "image_height": 5,
            "image_width": 6,
            "channels": 3,
            "model_cost": 34,
            "epochs": 3,
            "batch_size": 14,
            "weight_decay": 0.01,
        }
        out = task.train(x, y, config, 3, x_val=xv, y_val=yv)
        weights, expected = reference_training(x, y, xv, yv, config, 3)
    state = load_state(out.model_state)
    # The same training, so the same weights at every step (the contributions are taken at them).
    for ours, theirs in (("conv", "0"), ("output", "4")):
        for part in ("weight", "bias"):
            torch.testing.assert_close(
                state[f"{ours}.{part}"], weights[f"{theirs}.{part}"], rtol=0, atol=1e-12
            )
    assert out.contributions is not None
    assert np.abs(expected).max() > 1e-4  # the check below is not vacuous
    np.testing.assert_allclose(out.contributions, expected, rtol=0, atol=1e-10)


def train_data_parallel(
    task, x: np.ndarray, y: np.ndarray, config: dict[str, Any], seed: int, world_size: int, **validation: Any
) -> list[TrainOutput]:
    """``task.train`` on each rank's contiguous shard of ``(x, y)``, the ranks as threads."""
    reducer = BarrierSum(world_size)

    def rank_main(rank: int) -> TrainOutput:
        shard = DataShard(rank, world_size, len(x), reducer.for_rank(rank))
        rows = slice(shard.start, shard.stop)
        try:
            return task.train(x[rows], y[rows], config, seed, shard=shard, **validation)
        except BaseException:
            reducer.barrier.abort()  # the other ranks fail too instead of waiting for this one
            raise

    # Every rank saves and restores one torch thread: no rank runs on more.
    with one_torch_thread(), ThreadPoolExecutor(world_size) as pool:
        return list(pool.map(rank_main, range(world_size)))


def relative_gap(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def test_two_ranks_train_the_single_worker_model(task) -> None:
    # 60 rows in batches of 4: 15 steps an epoch, some of whose batches lie wholly in one shard, so
    # the other rank has no rows in the step and contributes zeros to the all-reduce.
    x, y = arrays(60, seed=8)
    xv, yv = arrays(20, seed=9)
    config = {**CONFIG, "epochs": 4, "batch_size": 4}
    seed = 12
    shuffler = np.random.default_rng(seed)  # the task's batches, drawn as it draws them
    batches = np.stack([shuffler.permutation(60).reshape(15, 4) for _ in range(config["epochs"])])
    assert ((batches < 30).all(2) | (batches >= 30).all(2)).any()

    single = task.train(x, y, config, seed, x_val=xv, y_val=yv)
    ranks = train_data_parallel(task, x, y, config, seed, 2, x_val=xv, y_val=yv)

    # Every rank ends with the same model, to the bit, and it is the single worker's model.
    assert ranks[0].model_state == ranks[1].model_state
    ours, reference = load_state(ranks[0].model_state), load_state(single.model_state)
    assert set(ours) == set(reference)
    for key in (*MODEL_KEYS, "feature_mean", "feature_std"):
        assert relative_gap(ours[key].numpy(), reference[key].numpy()) <= DATA_PARALLEL_RTOL, key
    assert ranks[0].validation_accuracy == ranks[1].validation_accuracy == single.validation_accuracy
    # Each rank meters and credits only its own rows; together they are the single worker's.
    assert [len(r.visits) for r in ranks] == [30, 30]
    np.testing.assert_array_equal(np.concatenate([r.visits for r in ranks]), single.visits)
    assert single.contributions is not None and all(r.contributions is not None for r in ranks)
    credited = np.concatenate([r.contributions for r in ranks if r.contributions is not None])
    assert relative_gap(credited, single.contributions) <= DATA_PARALLEL_RTOL


def test_a_shard_must_hold_exactly_its_rows(task) -> None:
    x, y = arrays(10, seed=10)
    shard = DataShard(1, 2, 12, lambda array: None)  # rows 6..11 of 12: six rows, not ten
    with pytest.raises(TrainingError, match=r"x has 10 rows but DataShard\(rank=1.*holds 6; pass exactly"):
        task.train(x, y, CONFIG, 0, shard=shard)


def test_no_validation_set_means_no_accuracy_and_no_contributions(task) -> None:
    x, y = arrays(30, seed=11)
    out = task.train(x, y, {**CONFIG, "epochs": 1}, 0)
    assert (out.validation_accuracy, out.contributions) == (None, None)


@pytest.mark.parametrize(
    ("x", "y", "validation", "fragment"),
    [
        (
            np.zeros((2, 63)),
            [0, 1],
            None,
            r"63 pixel columns but config image_height × image_width is 8 × 8 = 64; set image_height",
        ),
        (
            np.zeros((3, 64)),
            [0, 1, 2],
            None,
            r"labels \['2'\]; this task is binary — encode the label as 0/1",
        ),
        (np.zeros((2, 64)), [0.5, 1], None, r"labels \['0.5'\]; this task is binary"),
        (np.array([["a"] * 64] * 2), [0, 1], None, "features must be real numbers — encode"),
        (np.full((2, 64), np.nan), [0, 1], None, r"row 0, column 0 is nan; clean the data"),
        (
            np.zeros((2, 64)),
            [0, 1],
            (np.zeros((2, 63)), [0, 1]),
            "x_val has 63 features, the model was trained on 64",
        ),
        (np.zeros((2, 64)), [0, 1], (np.zeros((2, 64)), None), "give both x_val and y_val"),
    ],
)
def test_bad_input_is_refused_with_the_fix(task, x, y, validation, fragment: str) -> None:
    x_val, y_val = validation or (None, None)
    with pytest.raises(TrainingError, match=fragment):
        task.train(x, np.asarray(y), CONFIG, 0, x_val=x_val, y_val=y_val)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            {"image_height": 2, "image_width": 32},
            r"images of 2 × 32 pixels are smaller than the 3 × 3 filters",
        ),
        ({"channels": 0}, "channels=0"),
        ({"image_width": 8.0}, r"image_width=8.0 must be an integer"),
        ({"learning_rate": "fast"}, "learning_rate='fast'"),
        ({"inrun": 1}, "inrun=1"),
    ],
)
def test_bad_config_is_refused(task, change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TrainingError, match=fragment):
        task.train(np.zeros((4, 64)), np.array([0, 1, 0, 1]), {**CONFIG, **change}, 0)


def test_a_job_runs_and_bills_visits_times_parameters(image_job_data: JobData, tmp_path: Path) -> None:
    outcome = in_process_job(image_job_data, tmp_path / "out", TASK, {"epochs": EPOCHS})
    n = len(image_job_data.frame)
    receipt = outcome.receipt
    assert receipt.task == TASK
    assert outcome.work_units == receipt.work_units == n * EPOCHS * 45
    assert sum(u.visits for u in receipt.owners.values()) == n * EPOCHS
    assert receipt.valuation["method"] == "in-run-first-order"
    assert outcome.validation_accuracy is not None and outcome.validation_accuracy > 0.9


@pytest.mark.integration
def test_a_job_on_the_attested_local_pool(
    settings: Settings, memory_db: ExchangeDB, image_job_data: JobData, tmp_path: Path
) -> None:
    from databright.trust import verify_receipt

    outcome, result = pool_job(settings, memory_db, image_job_data, tmp_path, TASK, {"epochs": EPOCHS})
    receipt = verify_receipt(outcome.receipt_envelope, result)
    assert receipt.measurement == result.measurement == measure_task(ENCLAVE_TASKS / TASK)
    assert receipt.task == TASK and receipt.work_units == len(image_job_data.frame) * EPOCHS * 45
    assert outcome.validation_accuracy is not None and outcome.validation_accuracy > 0.9
