"""The batched logistic-regression utility against an independent fit, and the set-function adapter."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from databright.errors import DatabrightError, ValuationError
from databright.valuation.knn_shapley import array_digest
from databright.valuation.utility import (
    BatchUtility,
    FunctionUtility,
    LogisticUtility,
    check_masks,
    evaluate_checked,
)


def blobs(n: int, d: int, classes: int, seed: int, val: int = 40) -> tuple[np.ndarray, ...]:
    """Overlapping Gaussian classes, so no subset is perfectly separable by accident of layout."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    yv = rng.integers(0, classes, size=val)
    return centres[y] + rng.normal(size=(n, d)), y, centres[yv] + rng.normal(size=(val, d)), yv


def reference_objective(x, y, mask, l2: float, w: torch.Tensor, classes: int) -> torch.Tensor:
    """The documented objective, written independently: torch's cross_entropy on full logits."""
    x1 = torch.from_numpy(np.hstack([x, np.ones((x.shape[0], 1))]))
    logits = torch.cat([x1 @ w, torch.zeros(x.shape[0], 1, dtype=torch.float64)], dim=1)
    ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none")
    m = torch.from_numpy(mask.astype(np.float64))
    return (m * ce).sum() / m.sum() + 0.5 * l2 * (w**2).sum()


@pytest.mark.parametrize("classes", [2, 3])
def test_each_fit_is_the_optimum_of_the_documented_objective(classes: int) -> None:
    x, y, xv, yv = blobs(60, 3, classes, seed=classes)
    utility = LogisticUtility(x, y, xv, yv, l2=0.05)
    rng = np.random.default_rng(1)
    masks = rng.random((12, 60)) < rng.uniform(0.05, 0.9, size=(12, 1))
    masks[0] = False
    masks[0, 7] = True  # one point: a single class, the penalty alone keeps the fit finite
    weights = utility.fit(masks)
    assert weights.shape == (12, 4, classes - 1)
    for mask, w in zip(masks, weights, strict=True):
        wt = torch.tensor(w, requires_grad=True)
        reference_objective(x, y, mask, 0.05, wt, classes).backward()
        # The objective is strictly convex, so a vanishing gradient pins the unique optimum.
        assert wt.grad is not None and float(wt.grad.abs().max()) < 1e-8
    assert utility.stats["unconverged"] == 0


def test_scores_match_an_independent_computation_from_the_fitted_weights() -> None:
    x, y, xv, yv = blobs(50, 2, 3, seed=5)
    masks = np.random.default_rng(2).random((6, 50)) < 0.5
    acc = LogisticUtility(x, y, xv, yv, score="accuracy")
    nll = LogisticUtility(x, y, xv, yv, score="neg_log_loss")
    weights = acc.fit(masks)
    xv1 = np.hstack([xv, np.ones((xv.shape[0], 1))])
    for w, a, b in zip(weights, acc.evaluate(masks), nll.evaluate(masks), strict=True):
        logits = np.hstack([xv1 @ w, np.zeros((xv.shape[0], 1))])
        assert a == pytest.approx(np.mean(np.argmax(logits, axis=1) == yv), abs=1e-15)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        assert b == pytest.approx(np.mean(log_probs[np.arange(len(yv)), yv]), abs=1e-12)


def test_an_empty_batch_scores_nothing() -> None:
    x, y, xv, yv = blobs(20, 2, 2, seed=0)
    utility = LogisticUtility(x, y, xv, yv)
    assert utility.evaluate(np.zeros((0, 20), dtype=bool)).shape == (0,)
    assert utility.fit(np.zeros((0, 20), dtype=bool)).shape == (0, 3, 1)


def test_empty_subset_is_the_uniform_predictor() -> None:
    x, y, xv, yv = blobs(20, 2, 3, seed=0)
    empty = np.zeros((1, 20), dtype=bool)
    assert LogisticUtility(x, y, xv, yv).evaluate(empty)[0] == pytest.approx(1 / 3, abs=1e-15)
    assert LogisticUtility(x, y, xv, yv, score="neg_log_loss").evaluate(empty)[0] == pytest.approx(
        -math.log(3), abs=1e-15
    )
    assert LogisticUtility(x, y, xv, yv).fit(empty).tolist() == [[[0.0, 0.0]] * 3]


def test_batched_fits_do_not_depend_on_the_batch() -> None:
    x, y, xv, yv = blobs(40, 3, 2, seed=9)
    masks = np.random.default_rng(4).random((25, 40)) < 0.4
    together = LogisticUtility(x, y, xv, yv, score="neg_log_loss").evaluate(masks)
    one_by_one = LogisticUtility(x, y, xv, yv, score="neg_log_loss", max_batch=1).evaluate(masks)
    singly = np.array([LogisticUtility(x, y, xv, yv, score="neg_log_loss")(np.flatnonzero(m)) for m in masks])
    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=1e-13)
    np.testing.assert_allclose(together, singly, rtol=0, atol=1e-13)


def test_warm_start_reaches_the_same_optimum_in_fewer_newton_steps() -> None:
    x, y, xv, yv = blobs(120, 3, 3, seed=11)
    masks = np.random.default_rng(0).random((32, 120)) < 0.7
    warm = LogisticUtility(x, y, xv, yv, score="neg_log_loss")
    cold = LogisticUtility(x, y, xv, yv, score="neg_log_loss", warm_start=False)
    np.testing.assert_allclose(warm.evaluate(masks), cold.evaluate(masks), rtol=0, atol=1e-9)
    assert warm.stats["newton_steps"] < cold.stats["newton_steps"]
    assert warm.stats["evaluations"] == cold.stats["evaluations"] == 32


def test_same_inputs_give_bit_identical_scores_and_threads_are_left_alone() -> None:
    x, y, xv, yv = blobs(80, 3, 2, seed=2)
    masks = np.random.default_rng(8).random((30, 80)) < 0.5
    threads = torch.get_num_threads()
    a = LogisticUtility(x, y, xv, yv, score="neg_log_loss").evaluate(masks)
    b = LogisticUtility(x, y, xv, yv, score="neg_log_loss").evaluate(masks)
    assert a.tobytes() == b.tobytes()
    assert torch.get_num_threads() == threads


def test_text_labels_and_validation_only_classes() -> None:
    x, y, xv, yv = blobs(30, 2, 3, seed=4)
    names = np.array(["cat", "dog", "eel"])
    y_text, yv_text = names[np.minimum(y, 1)], names[yv]  # "eel" appears only in validation
    utility = LogisticUtility(x, y_text, xv, yv_text)
    assert utility.classes.tolist() == ["cat", "dog", "eel"]
    full = utility.evaluate(np.ones((1, 30), dtype=bool))[0]
    # No model trained without "eel" predicts it, so the "eel" rows are all misses.
    assert full <= np.mean(yv_text != "eel") + 1e-15


def test_params_and_digests_name_what_defines_the_utility() -> None:
    x, y, xv, yv = blobs(10, 2, 2, seed=0)
    utility = LogisticUtility(x, y, xv, yv, score="neg_log_loss", l2=0.1, max_batch=3)
    assert isinstance(utility, BatchUtility)
    assert utility.params == {
        "utility": "logistic-regression",
        "score": "neg_log_loss",
        "l2": 0.1,
        "tol": 1e-9,
        "max_iter": 100,
    }
    assert utility.input_digests == {
        "x_train": array_digest(x.astype(np.float64)),
        "y_train": array_digest(y),
        "x_test": array_digest(xv.astype(np.float64)),
        "y_test": array_digest(yv),
    }
    assert "LogisticUtility(n=10, features=2, classes=2" in repr(utility)


def test_function_utility_wraps_a_set_function() -> None:
    calls: list[tuple[int, ...]] = []

    def size_squared(subset: tuple[int, ...]) -> float:
        calls.append(subset)
        return float(len(subset) ** 2)

    utility = FunctionUtility(size_squared, 4)
    masks = np.array([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(utility.evaluate(masks), [0.0, 4.0, 16.0])
    assert calls == [(), (0, 2), (0, 1, 2, 3)]
    assert utility((3, 1)) == 4.0 and calls[-1] == (1, 3)
    assert isinstance(utility, BatchUtility) and utility.params == {"utility": "size_squared"}
    assert utility.input_digests == {}


@pytest.mark.parametrize(
    ("fn", "message"),
    [(lambda s: float("nan"), "must be finite"), (lambda s: "high", "not a number")],
)
def test_function_utility_refuses_bad_scores(fn, message: str) -> None:
    with pytest.raises(ValuationError, match=message):
        evaluate_checked(FunctionUtility(fn, 3), np.ones((1, 3), dtype=bool))


def test_masks_are_checked() -> None:
    assert check_masks(np.array([1, 0, 1]), 3).tolist() == [[True, False, True]]
    for bad, message in [
        (np.ones((2, 4), dtype=bool), r"shape \(2, 4\)"),
        (np.array([[0, 2, 1]]), "only True/False"),
        (np.ones((2, 2, 3), dtype=bool), "shape"),
    ]:
        with pytest.raises(ValuationError, match=message):
            check_masks(bad, 3)
    with pytest.raises(ValuationError, match="outside 0…2"):
        FunctionUtility(len, 3)((0, 3))


def test_evaluate_checked_refuses_a_utility_that_miscounts_or_returns_nan() -> None:
    class Miscounting(FunctionUtility):
        def evaluate(self, masks: np.ndarray) -> np.ndarray:
            return np.zeros(masks.shape[0] + 1)

    class Infinite(FunctionUtility):
        def evaluate(self, masks: np.ndarray) -> np.ndarray:
            return np.full(masks.shape[0], np.inf)

    masks = np.ones((2, 3), dtype=bool)
    with pytest.raises(ValuationError, match="one score per row"):
        evaluate_checked(Miscounting(len, 3), masks)
    with pytest.raises(ValuationError, match="must be finite"):
        evaluate_checked(Infinite(len, 3), masks)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_train": np.ones((4, 2, 1))}, "2-D array"),
        ({"x_val": np.ones((3, 5))}, "embed both the same way"),
        ({"x_train": np.array([[np.nan, 1.0]] * 4)}, "NaN or infinity"),
        ({"y_train": np.zeros(3)}, "one label per row"),
        ({"y_train": np.zeros(4), "y_val": np.zeros(3)}, "one class"),
        ({"y_val": np.array(["a", "b", "a"])}, "different kinds of labels"),
        ({"score": "f1"}, "not one of"),
        ({"l2": 0.0}, "l2=0.0 must be a positive number"),
        ({"tol": -1.0}, "tol=-1.0"),
        ({"max_iter": 0}, "max_iter=0"),
        ({"max_batch": 2.5}, "max_batch=2.5"),
        ({"x_train": np.ones((4, 600)), "x_val": np.ones((3, 600))}, "reduce the features"),
    ],
)
def test_bad_inputs_raise_valuation_errors(change: dict, message: str) -> None:
    args = {
        "x_train": np.arange(8.0).reshape(4, 2),
        "y_train": np.array([0, 1, 0, 2]),
        "x_val": np.ones((3, 2)),
        "y_val": np.array([0, 1, 1]),
    }
    args.update(change)
    data = {k: args.pop(k) for k in ("x_train", "y_train", "x_val", "y_val")}
    with pytest.raises(ValuationError, match=message) as info:
        LogisticUtility(data["x_train"], data["y_train"], data["x_val"], data["y_val"], **args)
    assert isinstance(info.value, DatabrightError)


def test_importing_the_semivalue_modules_leaves_torch_unloaded() -> None:
    code = (
        "import sys, json; import databright.valuation.utility, databright.valuation.stopping, "
        "databright.valuation.tmc_shapley, databright.valuation.banzhaf; "
        "print(json.dumps('torch' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
