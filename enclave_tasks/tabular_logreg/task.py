"""Binary logistic regression on tabular features, trained inside an attested worker.

Features are standardised with the training set's mean and standard deviation; that standardised
space is both the model's input and the embedding in which KNN-Shapley values the records.
Training is minibatch SGD (no momentum) on the binary cross-entropy with L2 weight decay — the
update of ``torch.optim.SGD``, bit for bit; minibatches come from a generator seeded by the job,
torch runs on one CPU thread, and the weights start from a ``torch.Generator`` seeded by the job
(``seeded_init``: torch's default initialisation, never the process-wide seed), so the same data,
config and seed give the same model bytes. Every minibatch is metered, so the
visit counts in the receipt are exactly the rows the model read.

With ``inrun: true`` (the default) and a validation set, every step also credits each row of its
minibatch with its first-order contribution to the validation loss,
``η/|B| · ⟨∇ℓ_i(w), ∇L_val(w)⟩`` (``databright.valuation.inrun``), in closed form for logistic
regression: ``(σ(z_i) − y_i) · (a_i·G_W + g_b)`` with ``(G_W, g_b)`` the validation gradient at the
step's weights. The contributions only read the weights: the model bytes are the same with
``inrun`` on or off. Weight decay's share of each step belongs to no record and is left out.

Given a ``shard`` (``databright.training.data_parallel.DataShard``), ``x`` and ``y`` are one
worker's rows of a data-parallel job: the standardisation and every step's gradient are summed over
the job's workers, so the model is the single-worker model up to the order of additions, and only
this shard's rows are metered and credited (each at ``η/|global minibatch|``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from databright.errors import TrainingError
from databright.training.meter import UsageMeter
from databright.training.task_inputs import seeded_init
from databright.training.tasks import TrainOutput
from databright.valuation.inrun import LogisticInRun, LogisticValidation


def _features(name: str, x: Any, width: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise TrainingError(f"tabular_logreg: {name} must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise TrainingError(f"tabular_logreg: {name} has dtype {arr.dtype}; features must be numeric")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise TrainingError(f"tabular_logreg: {name} row {row} has NaN or infinity; clean the data first")
    if width is not None and arr.shape[1] != width:
        raise TrainingError(
            f"tabular_logreg: {name} has {arr.shape[1]} features, the model was trained on {width}"
        )
    return arr


def _binary(name: str, y: Any, rows: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != rows:
        raise TrainingError(f"tabular_logreg: {name} must hold one label per row ({rows}), got {arr.shape}")
    found = set(np.unique(arr).tolist())
    if not found <= {0, 1}:
        raise TrainingError(
            f"tabular_logreg: {name} has labels {sorted(found, key=str)[:5]}; this task is binary, "
            "encode the label as 0/1"
        )
    return arr.astype(np.float64)


def _setting(config: Mapping[str, Any], key: str, *, integer: bool, allow_zero: bool = False) -> float:
    value = config.get(key)
    number = math.nan
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, int) or not integer)
    ):
        number = float(value)
    # NaN fails both comparisons, so a missing or non-numeric setting is refused here too.
    if not (number > 0 or (allow_zero and number == 0)):
        kind = "an integer" if integer else "a number"
        bound = "≥ 0" if allow_zero else "> 0"
        raise TrainingError(f"tabular_logreg: config {key}={value!r} must be {kind} {bound}")
    return number


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise TrainingError(f"tabular_logreg: config {key}={value!r} must be true or false")
    return value


def train(
    x: np.ndarray,
    y: np.ndarray,
    config: Mapping[str, Any],
    seed: int,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    shard: Any = None,
) -> TrainOutput:
    """Train on ``(x, y)``; with ``(x_val, y_val)``, report accuracy on it and (``inrun``) each
    record's in-run contribution to its loss; without, both are ``None``. With ``shard``, train
    this worker's part of a data-parallel job (see the module docstring)."""
    import torch

    x = _features("x", x)
    n, width = x.shape
    labels = _binary("y", y, n)
    epochs = int(_setting(config, "epochs", integer=True))
    batch_size = int(_setting(config, "batch_size", integer=True))
    learning_rate = float(_setting(config, "learning_rate", integer=False))
    weight_decay = float(_setting(config, "weight_decay", integer=False, allow_zero=True))
    model_cost = int(_setting(config, "model_cost", integer=True))
    inrun = _flag(config, "inrun", default=True)

    if shard is not None and shard.rows != n:
        raise TrainingError(f"tabular_logreg: {shard!r} holds {shard.rows} rows, but x has {n}")
    if shard is None:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
    else:
        mean = shard.all_reduce_sum(x.sum(axis=0)) / shard.global_rows
        std = np.sqrt(shard.all_reduce_sum(((x - mean) ** 2).sum(axis=0)) / shard.global_rows)
    # A constant column carries no information; dividing by 1 keeps it at 0 instead of NaN.
    std = np.where(std > 0, std, 1.0)

    def embed(rows: np.ndarray) -> np.ndarray:
        return (_features("rows to embed", rows, width) - mean) / std

    validation: tuple[np.ndarray, np.ndarray] | None = None
    if x_val is not None or y_val is not None:
        if x_val is None or y_val is None:
            raise TrainingError("tabular_logreg: give both x_val and y_val, or neither")
        xv = embed(x_val)
        validation = (xv, _binary("y_val", y_val, xv.shape[0]))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = torch.nn.Linear(width, 1, dtype=torch.float64)
        seeded_init(torch, [model], seed)
        parameters = list(model.parameters())
        loss_fn = torch.nn.BCEWithLogitsLoss(reduction="mean" if shard is None else "sum")
        standardised = embed(x)
        inputs = torch.from_numpy(standardised)
        targets = torch.from_numpy(labels)
        shuffler = np.random.default_rng(seed)
        meter = UsageMeter(n)
        inrun_values: LogisticInRun | None = None
        if inrun and validation is not None:
            inrun_values = LogisticInRun(
                standardised, labels, LogisticValidation(*validation), learning_rate=learning_rate
            )
        # numpy views of the parameters: the in-place update below keeps them current, and reading
        # them leaves the model untouched.
        weight_view, bias_view = model.weight.detach().numpy(), model.bias.detach().numpy()
        rows_total = n if shard is None else shard.global_rows
        for _ in range(epochs):
            order = shuffler.permutation(rows_total)
            for start in range(0, rows_total, batch_size):
                batch = order[start : start + batch_size]
                # A shard reads its rows of the global minibatch, perhaps none.
                local = batch if shard is None else shard.local(batch)
                for parameter in parameters:
                    parameter.grad = None
                if local.size:
                    meter.record(local)
                    index = torch.from_numpy(local)
                    loss = loss_fn(model(inputs[index]).squeeze(1), targets[index])
                    if inrun_values is not None:
                        # Before the update: the step is credited at the weights its gradients were
                        # taken at.
                        inrun_values.observe(local, weight_view, bias_view, batch_size=len(batch))
                    loss.backward()
                if shard is not None:
                    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
                    shard.all_reduce_(grads)
                    for parameter, grad in zip(parameters, grads, strict=True):
                        parameter.grad = grad.div_(len(batch))
                with torch.no_grad():
                    for parameter in parameters:
                        # The update torch.optim.SGD makes (no momentum), written out: importing
                        # torch.optim loads torch._dynamo, seconds of start-up in every worker.
                        assert parameter.grad is not None
                        step = parameter.grad.add(parameter, alpha=weight_decay)
                        parameter.add_(step, alpha=-learning_rate)

        accuracy: float | None = None
        if validation is not None:
            xv, yv = validation
            with torch.no_grad():
                predicted = (model(torch.from_numpy(xv)).squeeze(1) > 0).double().numpy()
            accuracy = float(np.mean(predicted == yv))

        state = {
            "weight": model.weight.detach().clone(),
            "bias": model.bias.detach().clone(),
            "feature_mean": torch.from_numpy(mean.copy()),
            "feature_std": torch.from_numpy(std.copy()),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
    finally:
        torch.set_num_threads(threads)

    return TrainOutput(
        model_state=buffer.getvalue(),
        visits=meter.visits,
        embed=embed,
        validation_accuracy=accuracy,
        model_cost=model_cost,
        contributions=None if inrun_values is None else inrun_values.values,
    )
