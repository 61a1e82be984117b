"""Binary classification of tabular features by a one-hidden-layer ReLU MLP, inside an attested worker.

Features are standardised with the training set's mean and standard deviation (stored in the model
state as ``feature_mean``/``feature_std``, so the ``knn_shapley`` value task reads the records in the
same space); the model is ``z = w₂·relu(W₁a + b₁) + b₂`` on the binary cross-entropy with logits.
Training is minibatch SGD (no momentum) with L2 weight decay — ``torch.optim.SGD``'s update, written
out —; minibatches come from a generator seeded by the job, the weights start from a
``torch.Generator`` seeded by the job (``seeded_init``), everything is float64 on one CPU thread,
so the same data, config and seed give the same model bytes. Every minibatch is metered: the visit
counts are exactly the rows read.

With ``inrun: true`` (the default) and a validation set, every step credits each row of its minibatch
with its *exact* first-order contribution to the validation loss, ``η/|B| · ⟨∇ℓ_i(w), ∇L_val(w)⟩``
(``databright.valuation.inrun``), over all four parameter tensors. Both layers are linear, so each
layer's term is a ghost dot product (``ghost_dot``) of the row's back-propagated error and its
input: ``δ_i = σ(z_i) − y_i`` at the output, ``δ_i · w₂ ⊙ 1[W₁a_i + b₁ > 0]`` at the hidden layer.
No per-sample gradient is materialised; the credits are deferred and computed for chunks of steps
at once (``_PendingSteps``). The contributions only read the weights (before the step's
update): the model bytes are the same with ``inrun`` on or off. Weight decay's share of each step
belongs to no record and is left out.

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

from databright.errors import TrainingError
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
from databright.valuation.inrun import InRunContributions, ghost_dot

TASK = "tabular_mlp"


def parameter_count(width: int, hidden: int) -> int:
    """Parameters a sample's forward and backward pass touch: every one of them, in a dense MLP —
    ``hidden × width`` weights and ``hidden`` biases in, ``hidden`` weights and one bias out."""
    return hidden * (width + 2) + 1


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
    record's exact in-run contribution to its loss; without, both are ``None``. With ``shard``,
    train this worker's part of a data-parallel job (see the module docstring)."""
    import torch

    x = features(TASK, "x", x)
    n, width = x.shape
    labels = binary_labels(TASK, "y", y, n)
    hidden = int(setting(TASK, config, "hidden", integer=True))
    epochs = int(setting(TASK, config, "epochs", integer=True))
    batch_size = int(setting(TASK, config, "batch_size", integer=True))
    learning_rate = float(setting(TASK, config, "learning_rate", integer=False))
    weight_decay = float(setting(TASK, config, "weight_decay", integer=False, allow_zero=True))
    model_cost = int(setting(TASK, config, "model_cost", integer=True))
    inrun = flag(TASK, config, "inrun", default=True)
    # Work units are visits × model_cost: a cost that is not this model's size would bill for work
    # that was not done (or hide work that was), so it must match exactly.
    touched = parameter_count(width, hidden)
    if model_cost != touched:
        raise TrainingError(
            f"{TASK}: config model_cost={model_cost} but a {width}→{hidden}→1 MLP touches {touched} "
            f"parameters per sample (hidden × (features + 2) + 1); set model_cost to {touched}"
        )

    mean, std = standardisation(x, shard)

    def standardise(name: str, rows: Any) -> np.ndarray:
        return (features(TASK, name, rows, width) - mean) / std

    def embed(rows: np.ndarray) -> np.ndarray:
        return standardise("rows to embed", rows)

    validation = validation_set(TASK, x_val, y_val, standardise)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layer_in = torch.nn.Linear(width, hidden, dtype=torch.float64)
        layer_out = torch.nn.Linear(hidden, 1, dtype=torch.float64)
        seeded_init(torch, [layer_in, layer_out], seed)
        parameters = [layer_in.weight, layer_in.bias, layer_out.weight, layer_out.bias]

        def forward(rows: Any) -> tuple[Any, Any, Any]:
            """Pre-activations, hidden activations and logits: the in-run terms need all three."""
            pre = layer_in(rows)
            act = torch.relu(pre)
            return pre, act, layer_out(act).squeeze(1)

        loss_fn = torch.nn.BCEWithLogitsLoss(reduction="mean" if shard is None else "sum")
        standardised = standardise("x", x)
        inputs = torch.from_numpy(standardised)
        targets = torch.from_numpy(labels)
        shuffler = np.random.default_rng(seed)
        meter = UsageMeter(n)
        contributions: InRunContributions | None = None
        pending: _PendingSteps | None = None
        if inrun and validation is not None:
            contributions = InRunContributions(n)
            pending = _PendingSteps(
                torch,
                parameters,
                torch.from_numpy(validation[0]),
                torch.from_numpy(validation[1]),
                contributions,
                learning_rate,
            )
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
                    rows = inputs[index]
                    pre, act, logits = forward(rows)
                    loss = loss_fn(logits, targets[index])
                    if pending is not None:
                        # Before the update: the step is credited at the weights its gradients were
                        # taken at. Its validation gradient is computed later, for many steps at once.
                        detached = (pre.detach(), act.detach(), logits.detach())
                        pending.add(local, rows, *detached, targets[index], len(batch))
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

        if pending is not None:
            pending.flush()
        accuracy: float | None = None
        if validation is not None:
            xv, yv = validation
            with torch.no_grad():
                predicted = (forward(torch.from_numpy(xv))[2] > 0).double().numpy()
            accuracy = float(np.mean(predicted == yv))

        state = {
            "hidden.weight": layer_in.weight.detach().clone(),
            "hidden.bias": layer_in.bias.detach().clone(),
            "output.weight": layer_out.weight.detach().clone(),
            "output.bias": layer_out.bias.detach().clone(),
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
        contributions=None if contributions is None else contributions.values,
    )


class _PendingSteps:
    """Steps waiting for their in-run credit: each step's batch, activations and a copy of the
    weights it was taken at, credited ``η/|B| · ⟨∇ℓ_i(w), ∇L_val(w)⟩`` in chunks.

    The validation gradient is the costly part (a forward and backward pass over every validation
    row); computing it for a chunk of steps at once, as batched tensor products over the stacked
    weights, replaces one small pass per step with one large one. The credits only read the weights,
    so deferring them changes nothing in training.

    In closed form, for ``z = w₂·h + b₂``, ``h = relu(u)``, ``u = W₁a + b₁`` and the cross-entropy with
    logits, a row's error at the logit is ``δ = σ(z) − y`` and at the hidden pre-activations
    ``e = δ · w₂ ⊙ 1[u > 0]`` (torch's relu passes no gradient at 0, and neither does this); its
    gradient is ``(δh, δ)`` for the output layer and ``(e aᵀ, e)`` for the hidden one. The validation
    gradient is the mean of the same over the validation rows.
    """

    #: Elements of the chunk's largest temporary (steps × validation rows × hidden units), ~16 MB.
    BUDGET = 2_000_000

    def __init__(
        self,
        torch: Any,
        parameters: list[Any],
        val_inputs: Any,
        val_targets: Any,
        contributions: InRunContributions,
        learning_rate: float,
    ) -> None:
        self.torch = torch
        self.parameters = parameters
        self.val_inputs, self.val_targets = val_inputs, val_targets
        self.contributions = contributions
        self.learning_rate = learning_rate
        hidden = int(parameters[0].shape[0])
        self.chunk = max(1, min(64, self.BUDGET // max(1, int(val_inputs.shape[0]) * hidden)))
        self.steps: list[tuple[Any, ...]] = []

    def add(
        self, batch: np.ndarray, rows: Any, pre: Any, act: Any, logits: Any, labels: Any, size: int
    ) -> None:
        """Buffer a step: its rows (``batch``, this worker's part of a minibatch of ``size`` rows)."""
        weights = tuple(p.detach().clone() for p in self.parameters)  # the update is in place
        self.steps.append((batch, rows, pre, act, logits, labels, weights, size))
        if len(self.steps) == self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.steps:
            return
        torch = self.torch
        with torch.no_grad():
            w1 = torch.stack([s[6][0] for s in self.steps])  # K × H × I
            b1 = torch.stack([s[6][1] for s in self.steps])  # K × H
            w2 = torch.stack([s[6][2][0] for s in self.steps])  # K × H
            b2 = torch.stack([s[6][3][0] for s in self.steps])  # K
            xv, yv = self.val_inputs, self.val_targets
            val_pre = torch.einsum("vi,khi->kvh", xv, w1) + b1[:, None, :]
            val_act = torch.relu(val_pre)
            val_logits = torch.einsum("kvh,kh->kv", val_act, w2) + b2[:, None]
            val_delta = (torch.sigmoid(val_logits) - yv) / yv.shape[0]
            val_error = val_delta[:, :, None] * w2[:, None, :] * (val_pre > 0)
            grad_w2 = torch.einsum("kv,kvh->kh", val_delta, val_act)
            grad_b2 = val_delta.sum(1)
            grad_w1 = torch.einsum("kvh,vi->khi", val_error, xv)
            grad_b1 = val_error.sum(1)
            # Steps with a full batch are credited together (one einsum over steps × rows); an
            # epoch's shorter last batch on its own.
            full = max(len(s[0]) for s in self.steps)
            same = [k for k, s in enumerate(self.steps) if len(s[0]) == full]
            dots: dict[int, np.ndarray] = {}
            if same:
                pick = torch.tensor(same)
                rows = torch.stack([self.steps[k][1] for k in same])  # K' × B × I
                pre = torch.stack([self.steps[k][2] for k in same])  # K' × B × H
                act = torch.stack([self.steps[k][3] for k in same])
                logits = torch.stack([self.steps[k][4] for k in same])  # K' × B
                labels = torch.stack([self.steps[k][5] for k in same])
                delta = torch.sigmoid(logits) - labels
                error = delta[:, :, None] * w2[pick][:, None, :] * (pre > 0)
                output_term = delta * (
                    torch.einsum("kbh,kh->kb", act, grad_w2[pick]) + grad_b2[pick][:, None]
                )
                hidden_in = torch.einsum("kbi,khi->kbh", rows, grad_w1[pick]) + grad_b1[pick][:, None, :]
                hidden_term = torch.einsum("kbh,kbh->kb", error, hidden_in)
                both = (output_term + hidden_term).numpy()
                dots.update({k: both[j] for j, k in enumerate(same)})
            for k, (batch, rows_k, pre_k, act_k, logits_k, labels_k, _, size) in enumerate(self.steps):
                if k not in dots:
                    delta_k = torch.sigmoid(logits_k) - labels_k
                    error_k = delta_k[:, None] * w2[k] * (pre_k > 0)
                    dots[k] = np.asarray(
                        ghost_dot(
                            delta_k.numpy(),
                            act_k.numpy(),
                            grad_w2[k][None, :].numpy(),
                            grad_b2[k][None].numpy(),
                        )
                        + ghost_dot(error_k.numpy(), rows_k.numpy(), grad_w1[k].numpy(), grad_b1[k].numpy())
                    )
                self.contributions.add_steps(
                    [batch], dots[k], learning_rate=self.learning_rate, batch_sizes=[size]
                )
        self.steps = []
