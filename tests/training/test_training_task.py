"""The tabular_logreg enclave task and the task loader."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from training_fixtures import ENCLAVE_TASKS, separable

from databright.errors import ConfigError, TrainingError
from databright.training import TrainOutput, load_task, resolve_config
from databright.training.task_inputs import seeded_init
from databright.trust.measurement import measure_task

CONFIG: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 0.1,
    "weight_decay": 1e-4,
    "inrun": True,
    "model_cost": 9,
}


@pytest.fixture(scope="module")
def task():
    return load_task(ENCLAVE_TASKS, "tabular_logreg")


def test_manifest_defaults_and_identity(task) -> None:
    assert task.defaults == CONFIG
    assert task.manifest["entrypoint"] == "task.py"
    assert task.manifest["model"] == "logistic regression"
    identity = task.identity
    assert (identity.signer_id, identity.product_id, identity.svn) == ("databright-dev", 1, 1)


def test_learns_separable_data_and_meters_every_visit(task, rng: np.random.Generator) -> None:
    train = separable(rng, 300)
    val = separable(rng, 200)
    x, y = train.drop(columns="label").to_numpy(), train["label"].to_numpy()
    xv, yv = val.drop(columns="label").to_numpy(), val["label"].to_numpy()
    out = task.train(x, y, CONFIG, 5, x_val=xv, y_val=yv)
    assert isinstance(out, TrainOutput)
    assert out.validation_accuracy is not None and out.validation_accuracy > 0.9
    # Every epoch is one pass over a permutation: each record is read exactly `epochs` times.
    assert out.visits.dtype == np.int64
    np.testing.assert_array_equal(out.visits, np.full(300, CONFIG["epochs"]))
    assert out.total_visits == CONFIG["epochs"] * 300
    assert out.model_cost == 9


def test_embedding_is_standardised_training_space(task, rng: np.random.Generator) -> None:
    x = rng.normal(3.0, 2.0, size=(50, 8))
    x[:, 4] = 7.0  # a constant column stays finite (at zero)
    y = (x[:, 0] > 3.0).astype(int)
    out = task.train(x, y, {**CONFIG, "epochs": 1}, 0)
    z = out.embed(x)
    np.testing.assert_allclose(z.mean(axis=0), np.zeros(8), atol=1e-12)
    expected_std = np.ones(8)
    expected_std[4] = 0.0
    np.testing.assert_allclose(z.std(axis=0), expected_std, atol=1e-12)
    new = rng.normal(size=(3, 8))
    np.testing.assert_allclose(
        out.embed(new), (new - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0), atol=1e-12
    )
    assert out.validation_accuracy is None
    with pytest.raises(TrainingError, match="8"):
        out.embed(np.zeros((2, 3)))


def test_model_bytes_are_deterministic_and_loadable(task, rng: np.random.Generator) -> None:
    import torch

    frame = separable(rng, 80)
    x, y = frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()
    first = task.train(x, y, CONFIG, 9)
    second = task.train(x, y, CONFIG, 9)
    other_seed = task.train(x, y, CONFIG, 10)
    assert first.model_state == second.model_state
    assert first.model_state != other_seed.model_state
    state = torch.load(io.BytesIO(first.model_state), weights_only=True)
    assert set(state) == {"weight", "bias", "feature_mean", "feature_std"}
    assert tuple(state["weight"].shape) == (1, 8)
    np.testing.assert_allclose(state["feature_mean"].numpy(), x.mean(0), atol=1e-12)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": -3}, "batch_size=-3"),
        ({"learning_rate": "fast"}, "learning_rate='fast'"),
        ({"model_cost": 1.5}, "model_cost=1.5"),
    ],
)
def test_bad_config_is_refused(task, change, fragment: str) -> None:
    x = np.zeros((4, 2))
    with pytest.raises(TrainingError, match=fragment):
        task.train(x, np.array([0, 1, 0, 1]), {**CONFIG, **change}, 0)


def test_non_binary_labels_are_refused(task) -> None:
    with pytest.raises(TrainingError, match="binary"):
        task.train(np.zeros((3, 2)), np.array([0, 1, 2]), CONFIG, 0)


def test_resolve_config_checks_keys_and_types() -> None:
    defaults = {"epochs": 20, "learning_rate": 0.1, "name": "x", "flag": False}
    assert resolve_config(defaults, {"learning_rate": 1, "epochs": 3}) == {
        "epochs": 3,
        "learning_rate": 1.0,
        "name": "x",
        "flag": False,
    }
    with pytest.raises(TrainingError, match="'epoch' is not a setting"):
        resolve_config(defaults, {"epoch": 3})
    with pytest.raises(TrainingError, match=r"epochs=2\.5"):
        resolve_config(defaults, {"epochs": 2.5})
    with pytest.raises(TrainingError, match="flag=1"):
        resolve_config(defaults, {"flag": 1})
    with pytest.raises(TrainingError, match="epochs=True"):
        resolve_config(defaults, {"epochs": True})


def test_loading_writes_nothing_into_the_measured_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tabular_logreg"
    shutil.copytree(ENCLAVE_TASKS / "tabular_logreg", folder, ignore=shutil.ignore_patterns("__pycache__"))
    before = measure_task(folder)
    listing = sorted(p.name for p in folder.rglob("*"))
    load_task(tmp_path, "tabular_logreg")
    assert sorted(p.name for p in folder.rglob("*")) == listing
    assert measure_task(folder) == before


def test_loader_refuses_broken_tasks(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "manifest.yaml").write_text(
        "name: broken\nentrypoint: ../escape.py\nsigner_id: s\nproduct_id: 1\nsvn: 1\nconfig: {}\n"
    )
    with pytest.raises(ConfigError, match="inside the task folder"):
        load_task(tmp_path, "broken")
    (folder / "manifest.yaml").write_text(
        "name: broken\nentrypoint: task.py\nsigner_id: s\nproduct_id: 1\nsvn: 1\nconfig: {}\n"
    )
    (folder / "task.py").write_text("def fit():\n    pass\n")
    with pytest.raises(TrainingError, match="defines no train"):
        load_task(tmp_path, "broken")
    (folder / "task.py").write_text("raise RuntimeError('nope')\n")
    with pytest.raises(TrainingError, match="RuntimeError: nope"):
        load_task(tmp_path, "broken")
    with pytest.raises(ConfigError, match="no enclave task 'missing'"):
        load_task(tmp_path, "missing")


@pytest.mark.slow
def test_sgd_matches_torch_optim_bit_for_bit(task, rng: np.random.Generator) -> None:
    # Independent reference: the same loop with torch.optim.SGD (slow only because torch.optim
    # imports torch._dynamo).
    import torch

    frame = separable(rng, 100)
    x, y = frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()
    out = task.train(x, y, CONFIG, 4)
    state = torch.load(io.BytesIO(out.model_state), weights_only=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = torch.nn.Linear(8, 1, dtype=torch.float64)
        seeded_init(torch, [model], 4)  # the task's job-seeded start
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
        z = torch.from_numpy((x - x.mean(0)) / x.std(0))
        targets = torch.from_numpy(y.astype(np.float64))
        shuffler = np.random.default_rng(4)
        for _ in range(CONFIG["epochs"]):
            order = shuffler.permutation(len(x))
            for start in range(0, len(x), CONFIG["batch_size"]):
                index = torch.from_numpy(order[start : start + CONFIG["batch_size"]])
                optimiser.zero_grad()
                torch.nn.functional.binary_cross_entropy_with_logits(
                    model(z[index]).squeeze(1), targets[index]
                ).backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(state["weight"], model.weight.detach())
    assert torch.equal(state["bias"], model.bias.detach())


def test_weights_start_from_the_job_seed_not_the_process_wide_one(task, rng: np.random.Generator) -> None:
    import torch

    frame = separable(rng, 60)
    x, y = frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()
    torch.manual_seed(1)
    first = task.train(x, y, CONFIG, 4).model_state
    torch.manual_seed(2)  # another test (or thread) moving the global generator changes nothing
    assert task.train(x, y, CONFIG, 4).model_state == first
    assert task.train(x, y, CONFIG, 5).model_state != first
