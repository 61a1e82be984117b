"""Binary classification of small grey-level images by a convolutional network, inside an attested worker.

The exchange's datasets are tables, so an image is a row: its pixels in row-major order as the
feature columns (``image_height × image_width`` of them, e.g. ``p00`` … ``p77``) and a 0/1 label. The
pixels are standardised with one mean and one standard deviation over every pixel of the training
set (a convolution applies the same filter everywhere, so every position must be scaled alike;
stored in the model state as ``feature_mean``/``feature_std``, the scalar repeated per column, so the
``knn_shapley`` value task reads the records in the same space). The model is

    u = conv3×3(a) + b  (``channels`` filters, no padding)   h = relu(u)
    g = mean of h over the (H − 2)(W − 2) positions            z = v·g + β

on the binary cross-entropy with logits. Training is minibatch SGD (no momentum) with L2 weight
decay — ``torch.optim.SGD``'s update, written out —; minibatches come from a generator seeded by the
job, the weights from a ``torch.Generator`` seeded by the job (torch's default initialisation of a
``Conv2d`` and a ``Linear``, ``U(±1/√fan_in)``; a private generator rather than ``torch.manual_seed``,
so that ranks sharing a process draw the same weights), everything is float64 on one CPU thread, so
the same data, config and seed give the same model bytes. Every minibatch is metered.

**Data-parallel.** Given a ``DataShard``, ``x``/``y`` hold only that shard's rows. The statistics are
global (``shard.all_reduce_sum``), the permutation is drawn over every row of the dataset, and each
global minibatch's *summed* loss gradient over the shard's rows in it (zeros when there are none) is
all-reduced and divided by the global minibatch size: the single-worker update up to the order of
floating-point additions. Without a shard the task is its own one-worker job.

With ``inrun: true`` (the default) and a validation set, every step credits each row of its minibatch
with its *exact* first-order contribution to the validation loss, ``η/|B| · ⟨∇ℓ_i(w), ∇L_val(w)⟩``
(``databright.valuation.inrun``; ``|B|`` the global minibatch), over all four parameter tensors, in
closed form (``_PendingSteps``) — no per-sample gradient is materialised. The contributions only read
the weights: the model bytes are the same with ``inrun`` on or off. Weight decay's share of each step
belongs to no record and is left out.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from databright.errors import TrainingError
from databright.training.data_parallel import DataShard
from databright.training.meter import UsageMeter
from databright.training.task_inputs import binary_labels, features, flag, setting, validation_set
from databright.training.tasks import TrainOutput
from databright.valuation.inrun import InRunContributions

TASK = "small_cnn"
#: The convolution's kernel side: 3 × 3 filters, one input channel (grey levels).
KERNEL = 3


def parameter_count(channels: int) -> int:
    """Parameters a sample's forward and backward pass touch: all of them — ``channels`` 3 × 3 filters
    and their biases, then ``channels`` output weights and one bias. Each filter weight is applied at
    every position of the image, but the work unit counts parameters, as for every task."""
    return channels * (KERNEL * KERNEL + 2) + 1


def _alone(array: np.ndarray) -> None:
    """The all-reduce of a one-worker job: the sum over one worker is its own value."""


def train(
    x: np.ndarray,
    y: np.ndarray,
    config: Mapping[str, Any],
    seed: int,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    shard: DataShard | None = None,
) -> TrainOutput:
    """Train on ``(x, y)`` — with ``shard``, that shard's rows of a data-parallel job —; with
    ``(x_val, y_val)``, report accuracy on it and (``inrun``) each record's exact in-run contribution
    to its loss; without, both are ``None``."""
    import torch

    x = features(TASK, "x", x)
    n, width = x.shape
    labels = binary_labels(TASK, "y", y, n)
    height = int(setting(TASK, config, "image_height", integer=True))
    side = int(setting(TASK, config, "image_width", integer=True))
    channels = int(setting(TASK, config, "channels", integer=True))
    epochs = int(setting(TASK, config, "epochs", integer=True))
    batch_size = int(setting(TASK, config, "batch_size", integer=True))
    learning_rate = float(setting(TASK, config, "learning_rate", integer=False))
    weight_decay = float(setting(TASK, config, "weight_decay", integer=False, allow_zero=True))
    model_cost = int(setting(TASK, config, "model_cost", integer=True))
    inrun = flag(TASK, config, "inrun", default=True)
    if height * side != width:
        raise TrainingError(
            f"{TASK}: the data has {width} pixel columns but config image_height × image_width is "
            f"{height} × {side} = {height * side}; set image_height and image_width to the images' size "
            "(the feature columns are the pixels in row-major order, height × width of them)"
        )
    if min(height, side) < KERNEL:
        raise TrainingError(
            f"{TASK}: images of {height} × {side} pixels are smaller than the {KERNEL} × {KERNEL} "
            f"filters; this task needs images at least {KERNEL} × {KERNEL}"
        )
    # Work units are visits × model_cost: a cost that is not this model's size would bill for work
    # that was not done (or hide work that was), so it must match exactly.
    touched = parameter_count(channels)
    if model_cost != touched:
        raise TrainingError(
            f"{TASK}: config model_cost={model_cost} but a CNN of {channels} {KERNEL}×{KERNEL} filters "
            f"touches {touched} parameters per sample (channels × ({KERNEL}·{KERNEL} + 2) + 1); set "
            f"model_cost to {touched}"
        )
    if shard is None:
        shard = DataShard(0, 1, n, _alone)
    elif not isinstance(shard, DataShard):
        raise TrainingError(f"{TASK}: shard must be a DataShard or None, got {type(shard).__name__}")
    if shard.rows != n:
        raise TrainingError(
            f"{TASK}: x has {n} rows but {shard!r} holds {shard.rows}; pass exactly the shard's rows"
        )

    # One mean and one deviation over every pixel of the whole dataset, summed across the shards.
    pixels = float(shard.global_rows) * width
    mean = float(shard.all_reduce_sum([x.sum()])[0]) / pixels
    spread = math.sqrt(float(shard.all_reduce_sum([np.square(x - mean).sum()])[0]) / pixels)
    # Constant images carry no information; dividing by 1 keeps them at 0 instead of NaN.
    std = spread if spread > 0 else 1.0

    def standardise(name: str, rows: Any) -> np.ndarray:
        return (features(TASK, name, rows, width) - mean) / std

    def embed(rows: np.ndarray) -> np.ndarray:
        return standardise("rows to embed", rows)

    validation = validation_set(TASK, x_val, y_val, standardise)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(seed)

        def initial(shape: tuple[int, ...], fan_in: int) -> Any:
            bound = 1.0 / math.sqrt(fan_in)
            values = torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
            return values.requires_grad_()

        parameters = [
            initial((channels, 1, KERNEL, KERNEL), KERNEL * KERNEL),
            initial((channels,), KERNEL * KERNEL),
            initial((1, channels), channels),
            initial((1,), channels),
        ]
        conv_weight, conv_bias, out_weight, out_bias = parameters

        def images(rows: np.ndarray) -> Any:
            return torch.from_numpy(rows).reshape(-1, 1, height, side)

        def forward(batch: Any) -> Any:
            pre = torch.nn.functional.conv2d(batch, conv_weight, conv_bias)
            pooled = torch.relu(pre).mean(dim=(2, 3))
            return torch.nn.functional.linear(pooled, out_weight, out_bias).squeeze(1)

        inputs = images(standardise("x", x))
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
                inputs,
                targets,
                images(validation[0]),
                torch.from_numpy(validation[1]),
                contributions,
                learning_rate,
                batch_size,
            )
        for _ in range(epochs):
            order = shuffler.permutation(shard.global_rows)
            for start in range(0, shard.global_rows, batch_size):
                batch = order[start : start + batch_size]
                local = shard.local(batch)
                meter.record(local)
                if local.size:
                    if pending is not None:
                        # Before the update: the step is credited at the weights its gradients are
                        # taken at. Its validation gradient is computed later, for many steps at once.
                        pending.add(local, len(batch))
                    index = torch.from_numpy(local)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(
                        forward(inputs[index]), targets[index], reduction="sum"
                    )
                    grads = list(torch.autograd.grad(loss, parameters))
                else:
                    grads = [torch.zeros_like(p) for p in parameters]
                if shard.world_size > 1:
                    shard.all_reduce_(grads)
                with torch.no_grad():
                    for parameter, grad in zip(parameters, grads, strict=True):
                        # The update torch.optim.SGD makes (no momentum) on the mean loss over the
                        # global minibatch, written out: importing torch.optim loads torch._dynamo,
                        # seconds of start-up in every worker.
                        step = grad.div_(len(batch)).add_(parameter, alpha=weight_decay)
                        parameter.add_(step, alpha=-learning_rate)

        if pending is not None:
            pending.flush()
        accuracy: float | None = None
        if validation is not None:
            with torch.no_grad():
                predicted = (forward(images(validation[0])) > 0).double().numpy()
            accuracy = float(np.mean(predicted == validation[1]))

        state = {
            "conv.weight": conv_weight.detach().clone(),
            "conv.bias": conv_bias.detach().clone(),
            "output.weight": out_weight.detach().clone(),
            "output.bias": out_bias.detach().clone(),
            "feature_mean": torch.full((width,), mean, dtype=torch.float64),
            "feature_std": torch.full((width,), std, dtype=torch.float64),
            "image_shape": torch.tensor([height, side], dtype=torch.int64),
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
    """Steps waiting for their in-run credit — each step's local rows, its global minibatch size and
    a copy of the weights it was taken at —, credited ``η/|B| · ⟨∇ℓ_i(w), ∇L_val(w)⟩`` in chunks.

    In closed form, with ``A_i`` row ``i``'s 3 × 3 patches (P positions × 9, ``unfold``), ``u = A_i Kᵀ +
    b`` (P × C), ``g = mean_p relu(u)`` and ``z = v·g + β``: the error at the logit is ``δ = σ(z) − y``,
    at the pre-activations ``e = δ · v ⊙ 1[u > 0] / P`` (torch's relu passes no gradient at 0, and
    neither does this); the gradient is ``(δg, δ)`` for the output layer and ``(eᵀA_i, Σ_p e)`` for the
    filters. So ``⟨∇ℓ_i, ∇L_val⟩ = δ(g·G_v + G_β) + Σ_p,c e[p,c] (A_i[p]·G_K[c] + G_b[c])`` — a ghost
    dot product summed over positions. The validation gradient ``(G_K, G_b, G_v, G_β)`` is the mean of
    the per-row gradients over the validation rows, computed for a chunk of steps at once as batched
    products over the stacked weights; each row's own terms are recomputed from its step's weights.
    Deferring them changes nothing in training: they only read the weights.
    """

    #: Elements of the chunk's largest temporaries (steps × rows × positions × filters or 9), ~16 MB.
    BUDGET = 2_000_000

    def __init__(
        self,
        torch: Any,
        parameters: list[Any],
        inputs: Any,
        targets: Any,
        val_inputs: Any,
        val_targets: Any,
        contributions: InRunContributions,
        learning_rate: float,
        batch_size: int,
    ) -> None:
        self.torch = torch
        self.parameters = parameters
        self.inputs, self.targets = inputs, targets
        patches = self.patches(val_inputs)  # V × P × 9
        self.val_rows, self.positions, taps = patches.shape
        self.val_patches = patches.reshape(-1, taps).contiguous()  # (V·P) × 9
        self.val_targets = val_targets
        self.contributions = contributions
        self.learning_rate = learning_rate
        channels = int(parameters[0].shape[0])
        per_step = self.positions * max(channels, taps) * (self.val_rows + batch_size)
        self.chunk = max(1, min(64, self.BUDGET // per_step))
        self.steps: list[tuple[np.ndarray, int, tuple[Any, ...]]] = []

    def patches(self, images: Any) -> Any:
        """Every 3 × 3 patch of each image, as rows × positions × 9 (the order ``conv2d`` reads)."""
        return self.torch.nn.functional.unfold(images, KERNEL).transpose(1, 2)

    def add(self, local: np.ndarray, global_size: int) -> None:
        weights = tuple(p.detach().clone() for p in self.parameters)  # the update is in place
        self.steps.append((local, global_size, weights))
        if len(self.steps) == self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.steps:
            return
        torch = self.torch
        with torch.no_grad():
            kernels = torch.stack([s[2][0].flatten(1) for s in self.steps])  # K × C × 9
            biases = torch.stack([s[2][1] for s in self.steps])  # K × C
            outs = torch.stack([s[2][2][0] for s in self.steps])  # K × C
            out_biases = torch.stack([s[2][3][0] for s in self.steps])  # K
            rows, positions = self.val_rows, self.positions
            steps, channels = biases.shape
            # One (V·P) × (K·C) work array — every validation patch against every step's filters —
            # transformed in place: pre-activations u, then relu(u), then 1[u > 0] (the sign of
            # relu(u), exactly 0 or 1), then δ · 1[u > 0].
            work = (self.val_patches @ kernels.reshape(steps * channels, -1).T).add_(biases.reshape(1, -1))
            grid = work.relu_().view(rows, positions, steps, channels)
            val_pooled = grid.mean(1)  # V × K × C
            val_logits = torch.einsum("vkc,kc->kv", val_pooled, outs) + out_biases[:, None]
            val_delta = (torch.sigmoid(val_logits) - self.val_targets) / rows  # K × V
            grid.sign_().mul_(val_delta.T[:, None, :, None])
            # e = δ · v ⊙ 1[u > 0] / P: the factor v/P depends only on the step and filter.
            scale = outs / positions  # K × C
            grad_out = torch.einsum("kv,vkc->kc", val_delta, val_pooled)
            grad_out_bias = val_delta.sum(1)
            taps = self.val_patches.shape[1]
            summed = (self.val_patches.T @ work).view(taps, steps, channels)  # Σ_v,p δ·1[u > 0]·A
            grad_kernels = summed.permute(1, 2, 0) * scale[:, :, None]  # K × C × 9
            grad_biases = grid.sum((0, 1)) * scale

            # Every row of the chunk at once, each with its step's weights and validation gradient.
            sizes = [len(s[0]) for s in self.steps]
            step = torch.repeat_interleave(torch.arange(steps), torch.tensor(sizes))
            index = torch.from_numpy(np.concatenate([s[0] for s in self.steps]))
            patches = self.patches(self.inputs[index])  # R × P × 9
            active = torch.bmm(patches, kernels[step].transpose(1, 2)).add_(biases[step][:, None, :]).relu_()
            pooled = active.mean(1)  # R × C
            logits = (pooled * outs[step]).sum(1) + out_biases[step]
            delta = torch.sigmoid(logits) - self.targets[index]
            filter_in = torch.bmm(patches, grad_kernels[step].transpose(1, 2)).add_(
                grad_biases[step][:, None, :]
            )
            filter_term = (active.sign_() * filter_in).sum(1)  # R × C: Σ_p 1[u > 0] (A G_Kᵀ + G_b)
            output_term = (pooled * grad_out[step]).sum(1) + grad_out_bias[step]
            dots = (delta * (output_term + (filter_term * scale[step]).sum(1))).numpy()
        # η/|B| for each step's global minibatch B, of which this worker credits its own rows.
        self.contributions.add_steps(
            [s[0] for s in self.steps],
            dots,
            learning_rate=self.learning_rate,
            batch_sizes=[s[1] for s in self.steps],
        )
        self.steps = []
