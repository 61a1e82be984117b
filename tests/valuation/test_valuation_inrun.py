"""In-run contributions: the ghost dot product against per-sample autograd, the task's accumulated
values against a brute-force replay, the first-order identity against the actual loss change."""

from __future__ import annotations

import io
import math
from importlib import metadata
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.config import PROJECT_ROOT
from databright.errors import TrainingError, ValuationError
from databright.training import TrainOutput, load_task
from databright.training.task_inputs import seeded_init
from databright.valuation import inrun
from databright.valuation.inrun import (
    METHOD,
    InRunContributions,
    LogisticInRun,
    LogisticValidation,
    ghost_dot,
    inrun_result,
    logistic_residual,
)

CONFIG: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 8,
    "learning_rate": 0.1,
    "weight_decay": 1e-3,
    "model_cost": 9,
    "inrun": True,
}


@pytest.fixture(scope="module")
def task():
    return load_task(PROJECT_ROOT / "enclave_tasks", "tabular_logreg")


def noisy_problem(seed: int, n: int, d: int = 8) -> tuple[np.ndarray, ...]:
    """A linear problem with label noise, so per-record gradients stay large and differ in sign."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    x, xv = rng.normal(2.0, 3.0, size=(n, d)), rng.normal(2.0, 3.0, size=(n // 2 + 7, d))
    y = ((x - 2.0) @ w + rng.normal(scale=2.0, size=n) > 0).astype(np.int64)
    yv = ((xv - 2.0) @ w + rng.normal(scale=2.0, size=len(xv)) > 0).astype(np.int64)
    return x, y, xv, yv


def standardise(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return (rows - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def per_sample_dots(
    model: torch.nn.Module, loss_fn: Any, inputs: torch.Tensor, targets: torch.Tensor, val_grad: torch.Tensor
) -> np.ndarray:
    """⟨∇ℓ_i, ∇L_val⟩ from one autograd pass per sample, every parameter flattened in order."""
    dots = []
    for i in range(inputs.shape[0]):
        loss = loss_fn(model(inputs[i : i + 1]), targets[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        dots.append(float(torch.cat([g.reshape(-1) for g in grads]) @ val_grad))
    return np.array(dots)


def flat_grad(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


# --- the ghost dot product ------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "out"), [(5, 3), (2, 4), (7, 1)])
def test_ghost_dot_equals_per_sample_autograd_including_the_bias(width: int, out: int) -> None:
    torch.manual_seed(width * 10 + out)
    model = torch.nn.Linear(width, out, dtype=torch.float64)
    rng = np.random.default_rng(out)
    a, av = torch.from_numpy(rng.normal(size=(6, width))), torch.from_numpy(rng.normal(size=(30, width)))
    if out == 1:
        loss_fn: Any = lambda z, t: torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], t)  # noqa: E731
        t, tv = torch.from_numpy(rng.integers(0, 2, 6) * 1.0), torch.from_numpy(rng.integers(0, 2, 30) * 1.0)
    else:
        loss_fn = torch.nn.functional.cross_entropy
        t, tv = torch.from_numpy(rng.integers(0, out, 6)), torch.from_numpy(rng.integers(0, out, 30))
    val_grad = flat_grad(model, loss_fn(model(av), tv))
    expected = per_sample_dots(model, loss_fn, a, t, val_grad)

    # δ_i = ∂ℓ_i/∂z_i, from autograd on the per-sample losses with respect to the logits.
    z = model(a).detach().requires_grad_(True)
    delta = torch.autograd.grad(sum(loss_fn(z[i : i + 1], t[i : i + 1]) for i in range(6)), z)[0]
    g_weight, g_bias = val_grad[: out * width].reshape(out, width), val_grad[out * width :]
    got = ghost_dot(delta.numpy(), a.numpy(), g_weight.numpy(), g_bias.numpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()))
    # Without the bias term the bias's share, δ_iᵀ g_b, is exactly what is missing.
    no_bias = ghost_dot(delta.numpy(), a.numpy(), g_weight.numpy())
    np.testing.assert_allclose(got - no_bias, delta.numpy() @ g_bias.numpy(), atol=1e-14)


def test_logistic_closed_forms_equal_autograd() -> None:
    _, _, xv, yv = noisy_problem(3, 40, d=5)
    torch.manual_seed(3)
    model = torch.nn.Linear(5, 1, dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    val = LogisticValidation(xv, yv)
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    ref_loss = bce(model(torch.from_numpy(xv))[:, 0], torch.from_numpy(yv * 1.0))
    assert val.loss(w, b) == pytest.approx(ref_loss.item(), rel=1e-14)
    ref_grad = flat_grad(model, ref_loss).numpy()
    g_weight, g_bias = val.gradient(w, b)
    assert g_weight.shape == (1, 5) and g_bias.shape == (1,)
    np.testing.assert_allclose(np.concatenate([g_weight[0], g_bias]), ref_grad, rtol=0, atol=1e-15)
    # The residual is the derivative of each sample's loss in its logit, even far from zero.
    z = torch.tensor([-800.0, -30.0, -1e-3, 0.0, 2.5, 40.0, 800.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    (expected,) = torch.autograd.grad(bce(z, t, reduction="sum"), z)
    got = logistic_residual(z.detach().numpy(), t.numpy())
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-15, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    width=st.integers(1, 5),
    out=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    bias=st.booleans(),
)
def test_ghost_dot_equals_the_explicit_outer_product(
    rows: int, width: int, out: int, seed: int, bias: bool
) -> None:
    rng = np.random.default_rng(seed)
    delta, a = rng.normal(size=(rows, out)), rng.normal(size=(rows, width))
    g_weight, g_bias = rng.normal(size=(out, width)), rng.normal(size=out)
    # Per-sample gradients materialised: vec(δ_i a_iᵀ) and δ_i, dotted with the flattened validation gradient.
    per_sample = np.einsum("io,iw->iow", delta, a).reshape(rows, -1)
    if bias:
        per_sample = np.hstack([per_sample, delta])
    val_grad = np.concatenate([g_weight.reshape(-1), g_bias]) if bias else g_weight.reshape(-1)
    got = ghost_dot(delta, a, g_weight, g_bias if bias else None)
    np.testing.assert_allclose(got, per_sample @ val_grad, rtol=1e-12, atol=1e-12)

    explicit, ghost = InRunContributions(rows + 2), InRunContributions(rows + 2)
    batch = rng.permutation(rows + 2)[:rows]
    explicit.add_dots(batch, per_sample @ val_grad, learning_rate=0.3)
    ghost.add_linear(batch, delta, a, g_weight, g_bias if bias else None, learning_rate=0.3)
    np.testing.assert_allclose(ghost.values, explicit.values, rtol=1e-12, atol=1e-12)


# --- accumulation ---------------------------------------------------------------------------------


def test_accumulation_scales_by_learning_rate_over_batch_size_and_counts_repeats() -> None:
    c = InRunContributions(5)
    # Dyadic numbers, so every product and sum below is exact and == is the right comparison.
    c.add_dots(np.array([0, 2, 2]), [1.0, 2.0, 3.0], learning_rate=0.75)
    c.add_dots(np.array([4]), [-1.0], learning_rate=0.5)
    # η/|B| = 0.25; record 2 appears twice in the first step and is credited twice; 1 and 3 never.
    np.testing.assert_array_equal(c.values, [0.25, 0.0, 0.5 + 0.75, 0.0, -0.5])
    assert c.steps == 2
    assert c.total() == 1.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 6))
def test_steps_added_together_equal_steps_added_one_by_one_bit_for_bit(seed: int, steps: int) -> None:
    rng = np.random.default_rng(seed)
    batches = [rng.integers(0, 9, size=rng.integers(1, 5)) for _ in range(steps)]
    dots = [rng.normal(size=b.shape[0]) for b in batches]
    one_by_one, together = InRunContributions(9), InRunContributions(9)
    for b, d in zip(batches, dots, strict=True):
        one_by_one.add_dots(b, d, learning_rate=0.05)
    together.add_steps(batches, np.concatenate(dots), learning_rate=0.05)
    assert one_by_one.values.tobytes() == together.values.tobytes()
    assert together.steps == steps
    # Within one step a record's credit does not depend on where its row sits in the batch.
    first = np.unique(batches[0])
    forward, backward = InRunContributions(9), InRunContributions(9)
    d = rng.normal(size=first.shape[0])
    forward.add_dots(first, d, learning_rate=0.05)
    backward.add_dots(first[::-1], d[::-1], learning_rate=0.05)
    assert forward.values.tobytes() == backward.values.tobytes()
    never = np.setdiff1d(np.arange(9), np.concatenate(batches))
    assert (together.values[never] == 0.0).all()


def test_logistic_in_run_equals_one_ghost_step_at_a_time_across_flushes(monkeypatch) -> None:
    monkeypatch.setattr(inrun, "_MAX_BUFFERED_STEPS", 3)  # several flushes and a partial one
    x, y, xv, yv = noisy_problem(5, 30, d=4)
    val = LogisticValidation(xv, yv)
    rng = np.random.default_rng(5)
    batched = LogisticInRun(x, y, val, learning_rate=0.2)
    stepwise = InRunContributions(30)
    for _ in range(8):
        batch = rng.choice(30, size=int(rng.integers(1, 7)), replace=False)
        weight, bias = rng.normal(size=(1, 4)), rng.normal(size=1)
        logits = x[batch] @ weight[0] + bias[0]
        g_weight, g_bias = val.gradient(weight, bias)
        delta = logistic_residual(logits, y[batch])
        stepwise.add_linear(batch, delta, x[batch], g_weight, g_bias, learning_rate=0.2)
        batched.observe(batch, weight, bias)
        # The caller's arrays change right after observe, as the weights do in an SGD step.
        weight += 1.0
        bias += 1.0
    got = batched.values
    assert batched.contributions.steps == 8
    np.testing.assert_allclose(got, stepwise.values, rtol=1e-12, atol=1e-15)


# --- the enclave task -----------------------------------------------------------------------------


def brute_force_replay(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, seed: int):
    """The task's SGD, replayed with every per-sample gradient materialised by autograd."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    z, zv = torch.from_numpy(standardise(x, x)), torch.from_numpy(standardise(x, xv))
    t, tv = torch.from_numpy(y * 1.0), torch.from_numpy(yv * 1.0)
    lr, decay, size = CONFIG["learning_rate"], CONFIG["weight_decay"], CONFIG["batch_size"]
    values = np.zeros(len(x))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = torch.nn.Linear(x.shape[1], 1, dtype=torch.float64)
        seeded_init(torch, [model], seed)  # the task's job-seeded start
        loss_fn = lambda out, target: bce(out[:, 0], target)  # noqa: E731
        shuffler = np.random.default_rng(seed)
        for _ in range(CONFIG["epochs"]):
            order = shuffler.permutation(len(x))
            for start in range(0, len(x), size):
                batch = order[start : start + size]
                val_grad = flat_grad(model, loss_fn(model(zv), tv))
                dots = per_sample_dots(model, loss_fn, z[batch], t[batch], val_grad)
                for row, dot in zip(batch.tolist(), dots.tolist(), strict=True):
                    values[row] += lr / len(batch) * dot
                # The update exactly as the task writes it, so the trajectories are the same bits.
                for p in model.parameters():
                    p.grad = None
                loss_fn(model(z[torch.from_numpy(batch)]), t[torch.from_numpy(batch)]).backward()
                with torch.no_grad():
                    for p in model.parameters():
                        assert p.grad is not None
                        p.add_(p.grad.add(p, alpha=decay), alpha=-lr)
    finally:
        torch.set_num_threads(threads)
    return values, model


def test_task_contributions_equal_a_brute_force_replay(task, monkeypatch) -> None:
    monkeypatch.setattr(inrun, "_MAX_BUFFERED_STEPS", 5)  # 21 steps: flushes mid-epoch and at the end
    x, y, xv, yv = noisy_problem(11, 50)  # 50 rows in batches of 8: the last batch of each epoch has 2
    out = task.train(x, y, CONFIG, 7, x_val=xv, y_val=yv)
    expected, model = brute_force_replay(x, y, xv, yv, 7)
    state = torch.load(io.BytesIO(out.model_state), weights_only=True)
    assert torch.equal(state["weight"], model.weight.detach())  # the replay followed the same path
    assert out.contributions is not None and out.contributions.dtype == np.float64
    assert (expected > 0).any() and (expected < 0).any()
    # Closed form vs autograd, grouped differently: agreement to a few hundred ulps of each value.
    np.testing.assert_allclose(out.contributions, expected, rtol=1e-12, atol=0)


def test_one_full_batch_step_matches_the_actual_validation_loss_change(task) -> None:
    x, y, xv, yv = noisy_problem(13, 60)
    zv = standardise(x, xv)
    val = LogisticValidation(zv, yv)
    for decay in (0.0, 0.05):
        config = {**CONFIG, "epochs": 1, "batch_size": 60, "learning_rate": 1e-3, "weight_decay": decay}
        out = task.train(x, y, config, 2, x_val=xv, y_val=yv)
        torch.manual_seed(2)
        start = torch.nn.Linear(8, 1, dtype=torch.float64)
        w0, b0 = start.weight.detach().numpy()[0], start.bias.detach().numpy()
        state = torch.load(io.BytesIO(out.model_state), weights_only=True)
        w1, b1 = state["weight"].numpy()[0], state["bias"].numpy()
        g_weight, g_bias = val.gradient(w0, b0)
        grad = np.concatenate([g_weight[0], g_bias])
        step = np.concatenate([w1 - w0, b1 - b0])
        # Weight decay's share, η·λ·⟨w, ∇L_val⟩, belongs to no record: the records' sum is the rest.
        decay_share = 1e-3 * decay * float(np.concatenate([w0, b0]) @ grad)
        assert out.contributions is not None
        first_order = -float(grad @ step)
        # Exact in real arithmetic; w1 is rounded to ~1e-16·|w| while the step is ~1e-4·|w|, so ~1e-12.
        assert math.fsum(out.contributions) + decay_share == pytest.approx(first_order, rel=1e-10)
        # Taylor with Lagrange remainder: |ΔL − first order| ≤ ½‖Δw‖²·λ_max(H); for the mean logistic
        # loss H ⪯ ¼·mean‖(a, 1)‖²·I. Plus a few ulps of the loss for evaluating it twice.
        actual = val.loss(w0, b0) - val.loss(w1, b1)
        bound = 0.5 * float(step @ step) * 0.25 * float(np.mean((zv**2).sum(axis=1) + 1.0))
        assert abs(actual - first_order) <= bound + 8 * np.finfo(float).eps * val.loss(w0, b0)
        assert bound < 1e-2 * abs(first_order)  # tight enough for the check to mean something


def test_model_bytes_are_identical_with_inrun_on_and_off(task) -> None:
    x, y, xv, yv = noisy_problem(17, 70)
    on = task.train(x, y, CONFIG, 4, x_val=xv, y_val=yv)
    off = task.train(x, y, {**CONFIG, "inrun": False}, 4, x_val=xv, y_val=yv)
    assert on.model_state == off.model_state
    assert on.validation_accuracy == off.validation_accuracy
    np.testing.assert_array_equal(on.visits, off.visits)
    assert on.contributions is not None and off.contributions is None
    assert task.train(x, y, CONFIG, 4).contributions is None  # no validation set, nothing to measure
    assert task.defaults["inrun"] is True


def test_task_contributions_are_deterministic_for_a_seed(task) -> None:
    x, y, xv, yv = noisy_problem(19, 40)
    first = task.train(x, y, CONFIG, 1, x_val=xv, y_val=yv).contributions
    second = task.train(x, y, CONFIG, 1, x_val=xv, y_val=yv).contributions
    other = task.train(x, y, CONFIG, 2, x_val=xv, y_val=yv).contributions
    assert first is not None and second is not None and other is not None
    assert first.tobytes() == second.tobytes()
    assert first.tobytes() != other.tobytes()


def test_flipped_labels_earn_less_than_clean_ones(task) -> None:
    rng = np.random.default_rng(23)
    x, xv = rng.normal(size=(400, 8)), rng.normal(size=(200, 8))
    w = rng.normal(size=8)
    y, yv = (x @ w > 0).astype(np.int64), (xv @ w > 0).astype(np.int64)
    flipped = rng.choice(400, size=40, replace=False)
    y[flipped] = 1 - y[flipped]
    out = task.train(x, y, {**CONFIG, "epochs": 5, "batch_size": 16}, 0, x_val=xv, y_val=yv)
    assert out.contributions is not None
    clean = np.setdiff1d(np.arange(400), flipped)
    assert out.contributions[flipped].mean() < 0 < out.contributions[clean].mean()


def test_inrun_setting_must_be_a_boolean(task) -> None:
    x, y, xv, yv = noisy_problem(29, 20)
    with pytest.raises(TrainingError, match="inrun='yes' must be true or false"):
        task.train(x, y, {**CONFIG, "inrun": "yes"}, 0, x_val=xv, y_val=yv)


# --- TrainOutput and the result -------------------------------------------------------------------


def output(contributions: Any, visits: Any = (1, 0, 2)) -> TrainOutput:
    return TrainOutput(
        model_state=b"model",
        visits=np.array(visits),
        embed=lambda rows: rows,
        validation_accuracy=None,
        model_cost=1,
        contributions=contributions,
    )


def test_train_output_checks_its_contributions() -> None:
    np.testing.assert_array_equal(output(np.array([0.5, 0.0, -1.0])).contributions, [0.5, 0.0, -1.0])
    assert output(None).contributions is None
    with pytest.raises(TrainingError, match="dtype float32"):
        output(np.zeros(3, dtype=np.float32))
    with pytest.raises(TrainingError, match=r"shape \(3, 1\)"):
        output(np.zeros((3, 1)))
    with pytest.raises(TrainingError, match="2 contributions for 3 metered records"):
        output(np.zeros(2))
    with pytest.raises(TrainingError, match="record 2 is nan"):
        output(np.array([0.0, 0.0, np.nan]))
    with pytest.raises(TrainingError, match="record 1 was never read"):
        output(np.array([0.0, 0.25, 0.0]))


def test_inrun_result_names_the_method_and_the_torch_version() -> None:
    result = inrun_result(
        np.array([0.25, -0.5]), params={"learning_rate": 0.1}, seed=3, record_ids=["a", "b"]
    )
    assert result.method == METHOD == "in-run-first-order"
    assert result.seed == 3 and result.record_ids == ("a", "b")
    assert result.library_versions["torch"] == metadata.version("torch")
    assert result.total() == -0.25
    with pytest.raises(ValuationError, match="1-D float64"):
        inrun_result(np.array([1, 2]), params={}, seed=None)


def logistic_in_run_of(batches: list[np.ndarray]) -> np.ndarray:
    run = LogisticInRun(
        np.zeros((4, 2)), np.zeros(4), LogisticValidation(np.zeros((2, 2)), [0, 1]), learning_rate=0.1
    )
    for batch in batches:
        run.observe(batch, np.zeros((1, 2)), np.zeros(1))
    return run.values


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: InRunContributions(-1), "non-negative record count"),
        (
            lambda: InRunContributions(3).add_dots(np.array([3]), [1.0], learning_rate=0.1),
            "index 3 is outside",
        ),
        (
            lambda: InRunContributions(3).add_dots(np.array([0.5]), [1.0], learning_rate=0.1),
            "must be integers",
        ),
        (lambda: InRunContributions(3).add_dots(np.array([], dtype=int), [], learning_rate=0.1), "non-empty"),
        (
            lambda: InRunContributions(3).add_dots(np.array([0, 1]), [1.0], learning_rate=0.1),
            "1 gradient dot",
        ),
        (
            lambda: InRunContributions(3).add_dots(np.array([0]), [1.0], learning_rate=0.0),
            "learning_rate 0.0",
        ),
        (
            lambda: InRunContributions(3).add_dots(np.array([0]), [np.inf], learning_rate=0.1),
            "NaN or infinity",
        ),
        (lambda: ghost_dot(np.ones((2, 1)), np.ones((3, 2)), np.ones((1, 2))), "delta has 2 rows"),
        (
            lambda: ghost_dot(np.ones((2, 1)), np.ones((2, 2)), np.ones((2, 1))),
            r"pass the gradient .*\(1, 2\)",
        ),
        (lambda: ghost_dot(np.ones((2, 1)), np.ones((2, 2)), np.ones((1, 2)), np.ones(2)), "2 entries"),
        (lambda: logistic_residual(np.zeros(3), np.zeros(2)), "do not line up"),
        (lambda: LogisticValidation(np.zeros((3, 2)), [0, 1, 2]), r"include \[2\]"),
        (lambda: LogisticValidation(np.zeros((0, 2)), []), "non-empty"),
        (lambda: LogisticValidation(np.full((2, 2), np.nan), [0, 1]), "NaN or infinity"),
        (
            lambda: LogisticValidation(np.zeros((2, 2)), [0, 1]).gradient(np.zeros(3), np.zeros(1)),
            "do not fit",
        ),
        (
            lambda: LogisticInRun(
                np.zeros((4, 3)), np.zeros(4), LogisticValidation(np.zeros((2, 2)), [0, 1]), learning_rate=0.1
            ),
            "do not match",
        ),
        (
            lambda: LogisticInRun(
                np.zeros((4, 2)), np.zeros(4), LogisticValidation(np.zeros((2, 2)), [0, 1]), learning_rate=-1
            ),
            "learning_rate -1",
        ),
        (
            lambda: LogisticInRun(
                np.zeros((4, 2)), np.zeros(4), LogisticValidation(np.zeros((2, 2)), [0, 1]), learning_rate=0.1
            ).observe(np.array([0, 1]), np.zeros((1, 3)), np.zeros(1)),
            "a weight of 3",
        ),
        (lambda: logistic_in_run_of([np.array([[0, 1]])]), r"shapes \[\(1, 2\)\]"),
        (
            lambda: LogisticValidation(np.zeros((2, 2)), [0, 1]).stacked_gradients(np.zeros((4, 2))),
            r"\(K, 3\)",
        ),
        (lambda: logistic_in_run_of([np.array([0, 4])]), "index 4 is outside"),
    ],
)
def test_bad_inputs_are_refused_with_a_fix(call, fragment: str) -> None:
    with pytest.raises(ValuationError, match=fragment):
        call()
