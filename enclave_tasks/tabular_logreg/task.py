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
from collections.abc import Mapping
from typing import Any

import numpy as np

from databright.training.data_parallel import standardisation
from databright.training.meter import UsageMeter
from databright.training.task_inputs import (
    binary_labels,
    features,
    flag,
    seeded_init,
    setting,
    validation_set,
)
from databright.training.tasks import TrainOutput
from databright.valuation.inrun import LogisticInRun, LogisticValidation

TASK = "tabular_logreg"


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

    x = features(TASK, "x", x)
    n, width = x.shape
    labels = binary_labels(TASK, "y", y, n)
    epochs = int(setting(TASK, config, "epochs", integer=True))
    batch_size = int(setting(TASK, config, "batch_size", integer=True))
    learning_rate = float(setting(TASK, config, "learning_rate", integer=False))
    weight_decay = float(setting(TASK, config, "weight_decay", integer=False, allow_zero=True))
    model_cost = int(setting(TASK, config, "model_cost", integer=True))
    inrun = flag(TASK, config, "inrun", default=True)

    mean, std = standardisation(x, shard)

    def standardise(name: str, rows: Any) -> np.ndarray:
        return (features(TASK, name, rows, width) - mean) / std

    def embed(rows: np.ndarray) -> np.ndarray:
        return standardise("rows to embed", rows)

    validation = validation_set(TASK, x_val, y_val, standardise)

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
