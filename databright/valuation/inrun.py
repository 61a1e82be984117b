"""In-run contributions: what each training record did to the validation loss while the model trained.

This is the first-order term of in-run data Shapley (Wang et al., "Data Shapley in One Training
Run", 2024) and of TracIn (Pruthi et al., 2020), accumulated inside the enclave task as it trains.

One SGD step with learning rate ``η`` on minibatch ``B`` (loss = mean over the batch, L2 weight decay
``λ``) moves the weights by ``w' − w = −η·(1/|B|)·Σ_{i∈B} ∇ℓ_i(w) − η·λ·w``. To first order the
validation loss changes by ``⟨∇L_val(w), w' − w⟩``, so its first-order *decrease* is

    Σ_{i∈B} η/|B| · ⟨∇ℓ_i(w), ∇L_val(w)⟩  +  η·λ·⟨w, ∇L_val(w)⟩.

Record ``i``'s contribution in that step is its term of the sum, ``η/|B| · ⟨∇ℓ_i(w), ∇L_val(w)⟩``:
positive when the step it caused lowered the validation loss (helpful), negative when it raised it.
A record's in-run value is the sum over every step whose batch held it — a record listed twice in a
batch counts twice, as the ``UsageMeter`` counts it — and a record never read is exactly ``0.0``.
``∇L_val`` is the gradient of the *unregularised* mean validation loss, taken at the weights before
the step, the same ``w`` as the per-sample gradients.

**Weight decay is left out.** Its term ``η·λ·⟨w, ∇L_val(w)⟩`` is a function of the weights alone: no
record's gradient appears in it, so no record caused it more than another, and any split (equal, by
visits, by value) would be a rule invented here rather than a measurement. The per-record values
therefore add up to the first-order decrease of the validation loss *minus* the accumulated decay
term; the tests check that identity against the actual loss change of a full-batch step.

**Ghost dot product.** For a linear layer ``z = W·a + b`` (``W``: out × in), the per-sample gradient
of ``ℓ_i`` is ``δ_i a_iᵀ`` for ``W`` and ``δ_i`` for ``b``, with ``δ_i = ∂ℓ_i/∂z_i``. Hence

    ⟨∇ℓ_i, ∇L_val⟩ = δ_iᵀ · G_W · a_i + δ_iᵀ · g_b        (G_W, g_b: the validation gradients)

which :func:`ghost_dot` evaluates through the narrower side of ``W``: memory is ``|B| × min(in, out)``
and no ``|B| × parameters`` array of per-sample gradients is ever built (the trick of Li et al.'s
"ghost clipping", 2022). For a deep model, using the last layer is the usual approximation; for a
linear or logistic model the last layer is the whole model and the value is exact.

**Logistic regression in closed form.** With the binary cross-entropy on logits ``z = w·a + b``,
``δ_i = σ(z_i) − y_i`` (:func:`logistic_residual`) and ``∇L_val = (1/m)·Σ_j (σ(z_j) − y_j)·(a_j, 1)``
(:class:`LogisticValidation`), so a logistic task needs torch only to train.

**Determinism.** Everything is float64. A step's contributions are added to the running totals with
``np.add.at`` — unbuffered, in batch order — so the same steps in the same order give the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from databright.errors import ValuationError
from databright.valuation.result import ValuationResult, library_versions

METHOD = "in-run-first-order"
# A flush of LogisticInRun holds at most this many validation logits (m × buffered steps), so its
# work arrays (512 KiB) stay in L2 and numpy's OpenBLAS keeps its products on the calling thread (at
# 4× the size it threads them, 5–10× slower on a busy 2-core machine); and at most this many steps,
# past which the per-step Python work is already amortised.
_FLUSH_ELEMENTS, _MAX_BUFFERED_STEPS = 1 << 15, 64


def _matrix(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValuationError(
            f"{name} must be 2-D (batch rows × layer width), got shape {arr.shape}; pass one row per sample"
        )
    return arr


def _finite(name: str, arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValuationError(
            f"{name} has a NaN or infinity at {where}; the model or its gradients diverged — lower the "
            "learning rate or clean the data"
        )
    return arr


def _learning_rate(value: Any) -> float:
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0 < value < math.inf):
        raise ValuationError(f"learning_rate {value!r} must be a finite number > 0")
    return float(value)


def _batches(batches: Sequence[Any]) -> list[np.ndarray]:
    parts = [np.asarray(b) for b in batches]
    if not parts or any(p.ndim != 1 or p.size == 0 for p in parts):
        raise ValuationError(
            "each step's batch must be a non-empty 1-D array of row positions, got shapes "
            f"{[p.shape for p in parts]}; pass the indices given to the usage meter"
        )
    return parts


def ghost_dot(
    delta: Any, activations: Any, val_weight_grad: Any, val_bias_grad: Any | None = None
) -> np.ndarray:
    """``⟨∇ℓ_i, ∇L_val⟩`` for each batch row ``i`` of a linear layer, without per-sample gradients.

    ``delta`` is ``∂ℓ_i/∂z_i`` (|B| × out, or |B| for one output), ``activations`` the layer's inputs
    ``a_i`` (|B| × in), ``val_weight_grad`` the validation gradient of the weight (out × in, torch's
    layout) and ``val_bias_grad`` that of the bias (out), or ``None`` for a layer without one.
    """
    d = _matrix("delta", delta)
    a = _matrix("activations", activations)
    g = np.asarray(val_weight_grad, dtype=np.float64)
    rows, out = d.shape
    width = a.shape[1]
    if a.shape[0] != rows:
        raise ValuationError(
            f"delta has {rows} rows but activations has {a.shape[0]}; give one of each per batch row"
        )
    if g.shape != (out, width):
        raise ValuationError(
            f"val_weight_grad has shape {g.shape}, but the layer maps {width} inputs to {out} outputs; "
            f"pass the gradient of the weight as torch lays it out, ({out}, {width})"
        )
    # Project through the narrower side of W: the only temporary is |B| × min(in, out).
    dots = np.einsum("ij,ij->i", a @ g.T, d) if out <= width else np.einsum("ij,ij->i", d @ g, a)
    if val_bias_grad is not None:
        gb = np.asarray(val_bias_grad, dtype=np.float64).reshape(-1)
        if gb.shape != (out,):
            raise ValuationError(
                f"val_bias_grad has {gb.shape[0]} entries for a layer with {out} outputs; pass the "
                "gradient of the bias, or None for a layer without one"
            )
        dots = dots + d @ gb
    return _finite("the ghost dot products", dots)


def _residual_in_place(z: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = σ(z) − y``, overwriting ``z``; no temporary array as large as ``z`` is allocated."""
    # σ(z) = e^{min(z, 0)} / (1 + e^{−|z|}): neither exponential overflows, and each is the accurate
    # form on its side of zero (no 1 − σ cancellation for very negative z).
    np.abs(z, out=out)
    np.negative(out, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.minimum(z, 0.0, out=z)
    np.exp(z, out=z)
    np.divide(z, out, out=out)
    out -= y
    return out


def logistic_residual(logits: Any, labels: Any) -> np.ndarray:
    """``σ(z) − y``: the derivative of the binary cross-entropy with logits ``z`` and 0/1 labels ``y``
    (any shapes that broadcast together)."""
    z = np.array(logits, dtype=np.float64)  # a copy: the computation overwrites it
    y = np.asarray(labels, dtype=np.float64)
    try:
        shape = np.broadcast_shapes(z.shape, y.shape)
    except ValueError as exc:
        raise ValuationError(
            f"logits of shape {z.shape} and labels of shape {y.shape} do not line up; "
            "give one label per logit"
        ) from exc
    return _residual_in_place(np.broadcast_to(z, shape).copy(), y, np.empty(shape))


class LogisticValidation:
    """The validation set of a binary logistic model: loss and gradient at given weights, closed form.

    ``x`` holds the validation features in the model's input space (m × d) and ``y`` their 0/1
    labels. Both are checked once, here, so the per-step work only multiplies.
    """

    def __init__(self, x: Any, y: Any) -> None:
        xv = np.asarray(x)
        if xv.ndim != 2 or xv.shape[0] == 0:
            raise ValuationError(
                f"validation features must be a non-empty 2-D array (rows × features), got shape {xv.shape}"
            )
        if not np.issubdtype(xv.dtype, np.number) or np.issubdtype(xv.dtype, np.complexfloating):
            raise ValuationError(f"validation features have dtype {xv.dtype}; they must be real numbers")
        self.x = np.ascontiguousarray(_finite("the validation features", xv.astype(np.float64)))
        yv = np.asarray(y)
        if yv.shape != (xv.shape[0],):
            raise ValuationError(
                f"validation labels have shape {yv.shape} for {xv.shape[0]} rows; give one 0/1 label per row"
            )
        if not np.isin(yv, (0, 1)).all():
            raise ValuationError(
                f"validation labels include {sorted(set(yv.tolist()) - {0, 1}, key=str)[:5]}; "
                "a binary logistic model needs labels encoded as 0/1"
            )
        self.y = yv.astype(np.float64)
        self._x1 = np.concatenate([self.x, np.ones((self.rows, 1))], axis=1)
        self._work: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def width(self) -> int:
        return int(self.x.shape[1])

    def _models(self, weights: Any, biases: Any) -> tuple[np.ndarray, np.ndarray]:
        w = np.asarray(weights, dtype=np.float64)
        b = np.asarray(biases, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != self.width or b.shape != (w.shape[0],):
            raise ValuationError(
                f"weights of shape {w.shape} and biases of shape {b.shape} do not fit {self.width} "
                f"validation features; pass K models as a (K, {self.width}) array and a (K,) array"
            )
        return w, b

    def loss(self, weight: Any, bias: Any) -> float:
        """Mean binary cross-entropy ``log(1 + e^z) − y·z`` over the validation rows (no L2 term), for
        torch's ``(1, d)`` weight and ``(1,)`` bias."""
        w, b = self._models(np.reshape(weight, (1, -1)), np.reshape(bias, (-1,)))
        z = self.x @ w[0] + b[0]
        return float(np.mean(np.logaddexp(0.0, z) - self.y * z))

    def gradients(self, weights: Any, biases: Any) -> tuple[np.ndarray, np.ndarray]:
        """The gradients of :meth:`loss` for ``K`` models at once: ``(K × d, K)``, one pass over the
        validation rows for all of them."""
        w, b = self._models(weights, biases)
        stacked = self.stacked_gradients(np.concatenate([w, b[:, None]], axis=1))
        return stacked[:, :-1], stacked[:, -1]

    def stacked_gradients(self, params: np.ndarray) -> np.ndarray:
        """:meth:`gradients` for models given as rows ``(w, b)`` of a ``K × (d + 1)`` float64 array,
        returned the same way (``(G_W, g_b)`` per row)."""
        if not (isinstance(params, np.ndarray) and params.dtype == np.float64 and params.ndim == 2) or (
            params.shape[1] != self.width + 1
        ):
            raise ValuationError(
                f"models must be a float64 array of shape (K, {self.width + 1}) — weights then bias — "
                f"got {type(params).__name__} {np.shape(params)}"
            )
        k = params.shape[0]
        # Two m × K work arrays, kept between calls: allocating them afresh each step costs more
        # than the arithmetic (page faults), so they grow to the largest K asked for and stay.
        if self._work is None or self._work.shape[1] < self.rows * k:
            self._work = np.empty((2, self.rows * k))
        logits = self._work[0, : self.rows * k].reshape(self.rows, k)
        residual = self._work[1, : self.rows * k].reshape(self.rows, k)
        # The features carry a column of ones, so one product gives the bias's logit and gradient too.
        np.matmul(self._x1, params.T, out=logits)
        _residual_in_place(logits, self.y[:, None], residual)
        return (residual.T @ self._x1) / float(self.rows)

    def gradient(self, weight: Any, bias: Any) -> tuple[np.ndarray, np.ndarray]:
        """The gradient of :meth:`loss` shaped like torch's ``(1, d)`` weight and ``(1,)`` bias."""
        return self.gradients(np.reshape(weight, (1, -1)), np.reshape(bias, (-1,)))


class InRunContributions:
    """Per-record in-run contributions, accumulated step by step (float64, one per record).

    Add each optimiser step *before* the weights change, with the step's batch indices (dataset row
    positions, as given to the ``UsageMeter``) and the learning rate. The loss is taken to be the
    mean over the batch, torch's default; for a summed loss pass ``learning_rate × |B|``.
    """

    def __init__(self, n_records: int) -> None:
        if isinstance(n_records, bool) or not isinstance(n_records, int | np.integer) or n_records < 0:
            raise ValuationError(
                f"in-run contributions need a non-negative record count, got {n_records!r}; pass len(dataset)"
            )
        self._values = np.zeros(int(n_records), dtype=np.float64)
        self._steps = 0

    @property
    def n_records(self) -> int:
        return int(self._values.shape[0])

    @property
    def steps(self) -> int:
        """How many steps have been added."""
        return self._steps

    @property
    def values(self) -> np.ndarray:
        """A copy of the accumulated contributions, one per record in dataset order."""
        return self._values.copy()

    def total(self) -> float:
        """Exactly rounded sum of all contributions (``math.fsum``)."""
        return math.fsum(self._values.tolist())

    def check_rows(self, rows: np.ndarray) -> None:
        """Refuse row positions that are not integers in ``0 … n_records − 1``."""
        if not np.issubdtype(rows.dtype, np.integer):
            raise ValuationError(
                f"batch indices must be integers, got dtype {rows.dtype}; pass the row positions given to "
                "the usage meter"
            )
        low, high = int(rows.min()), int(rows.max())
        if low < 0 or high >= self.n_records:
            raise ValuationError(
                f"batch index {low if low < 0 else high} is outside 0..{self.n_records - 1}; the step "
                "names a record the contributions were not sized for"
            )

    def add_steps(
        self,
        batches: Sequence[Any],
        dots: Any,
        *,
        learning_rate: float,
        batch_sizes: Sequence[int] | None = None,
    ) -> None:
        """Add several steps at once, in order: exactly (bit for bit) what :meth:`add_dots` per step
        adds. ``dots`` holds each row's ``⟨∇ℓ_i(w), ∇L_val(w)⟩``, the steps' batches concatenated.

        ``batch_sizes`` are the steps' minibatch sizes when they differ from the rows given — a
        data-parallel worker credits only its shard's rows of a larger global minibatch
        (``databright.training.data_parallel``); by default each step's own row count."""
        rate = _learning_rate(learning_rate)
        parts = _batches(batches)
        rows = np.concatenate(parts)
        self.check_rows(rows)
        d = np.asarray(dots, dtype=np.float64)
        if d.shape != rows.shape:
            raise ValuationError(
                f"{d.size} gradient dot products for {rows.shape[0]} batch rows; give one per row, in order"
            )
        counts = np.array([p.shape[0] for p in parts], dtype=np.int64)
        sizes = counts.astype(np.float64)
        if batch_sizes is not None:
            sizes = np.asarray(batch_sizes, dtype=np.float64)
            if sizes.shape != counts.shape or (sizes < counts).any():
                raise ValuationError(
                    f"batch sizes {list(batch_sizes)[:5]} for {len(parts)} steps: give one per step, each at "
                    "least the rows credited in it (the global minibatch size)"
                )
        scale = np.repeat(rate / sizes, counts)
        step = _finite("the steps' contributions", d * scale)
        # Unbuffered and in row order: repeated indices add up, and the bits never depend on layout.
        np.add.at(self._values, rows, step)
        self._steps += len(parts)

    def add_dots(self, batch: Any, dots: Any, *, learning_rate: float) -> None:
        """Add one step given each batch row's ``⟨∇ℓ_i(w), ∇L_val(w)⟩``."""
        self.add_steps([batch], dots, learning_rate=learning_rate)

    def add_linear(
        self,
        batch: Any,
        delta: Any,
        activations: Any,
        val_weight_grad: Any,
        val_bias_grad: Any | None = None,
        *,
        learning_rate: float,
    ) -> None:
        """Add one step of a linear (last) layer through the ghost dot product (:func:`ghost_dot`)."""
        dots = ghost_dot(delta, activations, val_weight_grad, val_bias_grad)
        self.add_dots(batch, dots, learning_rate=learning_rate)

    def __repr__(self) -> str:
        return f"InRunContributions(records={self.n_records}, steps={self.steps}, total={self.total():.6g})"


class LogisticInRun:
    """In-run contributions of a binary logistic model ``σ(w·a + b)`` trained by minibatch SGD.

    The task calls :meth:`observe` once per step, before the update, with the batch and the current
    weight and bias; that only copies the weights. Every few dozen steps the
    validation gradients of all buffered steps come from one pass over the validation set
    (:meth:`LogisticValidation.gradients`, a matrix product instead of a matrix-vector product per
    step), and each row's contribution is ``η/|B| · (σ(z_i) − y_i) · (a_i·G_W + g_b)`` — the ghost
    dot product of a one-output linear layer. How many steps are buffered depends only on the
    validation set's size, so the values are deterministic; they agree with one
    :meth:`InRunContributions.add_linear` per step to rounding (the products are grouped
    differently). ``features`` are the training rows exactly as the model reads them.
    """

    def __init__(
        self, features: Any, labels: Any, validation: LogisticValidation, *, learning_rate: float
    ) -> None:
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != validation.width or y.shape != (x.shape[0],):
            raise ValuationError(
                f"training features of shape {x.shape} and labels of shape {y.shape} do not match a "
                f"validation set of {validation.width} features; give (n, {validation.width}) and (n,)"
            )
        self.contributions = InRunContributions(x.shape[0])
        self._x, self._y, self._validation = x, y, validation
        self._learning_rate = _learning_rate(learning_rate)
        self._capacity = max(1, min(_MAX_BUFFERED_STEPS, _FLUSH_ELEMENTS // validation.rows))
        self._params = np.empty((self._capacity, validation.width + 1), dtype=np.float64)
        self._batches: list[Any] = []
        self._sizes: list[int] = []

    def observe(self, batch: Any, weight: Any, bias: Any, *, batch_size: int | None = None) -> None:
        """Buffer one step: ``batch`` (row positions) and the weight and bias before its update;
        ``batch_size`` is the step's global minibatch size when ``batch`` is one shard's part of it.

        Called once per step inside the training loop, so it only keeps a reference to ``batch``
        (which must not change afterwards) and copies the weights; everything is checked and
        computed in :meth:`flush`.
        """
        k = len(self._batches)
        try:
            # Copies: the caller's weight arrays are views that the update is about to change.
            self._params[k, :-1] = weight
            self._params[k, -1:] = bias
        except ValueError as exc:
            raise ValuationError(
                f"a weight of {np.size(weight)} and a bias of {np.size(bias)} numbers for "
                f"{self._params.shape[1] - 1} features; pass the model's (1, d) weight and (1,) bias"
            ) from exc
        self._batches.append(batch)
        self._sizes.append(len(batch) if batch_size is None else int(batch_size))
        if k + 1 == self._capacity:
            self.flush()

    def flush(self) -> None:
        """Turn the buffered steps into contributions."""
        if not self._batches:
            return
        k = len(self._batches)
        parts = _batches(self._batches)
        rows = np.concatenate(parts)
        self.contributions.check_rows(rows)
        params = self._params[:k]
        # Per step, its model (w, b) and its validation gradient (G_W, g_b): one gather per row.
        at = np.concatenate([params, self._validation.stacked_gradients(params)], axis=1)[
            np.repeat(np.arange(k), [p.shape[0] for p in parts])
        ]
        a, d = self._x[rows], self._x.shape[1]
        # Each row's logit at its step's weights, then δ_i (a_i·G_W + g_b) for that step's gradient.
        delta = logistic_residual(np.einsum("ij,ij->i", a, at[:, :d]) + at[:, d], self._y[rows])
        dots = delta * (np.einsum("ij,ij->i", a, at[:, d + 1 : -1]) + at[:, -1])
        self.contributions.add_steps(parts, dots, learning_rate=self._learning_rate, batch_sizes=self._sizes)
        self._batches.clear()
        self._sizes.clear()

    @property
    def values(self) -> np.ndarray:
        """Every observed step's contributions, one float64 per record."""
        self.flush()
        return self.contributions.values


def inrun_result(
    values: Any,
    *,
    params: Mapping[str, Any],
    seed: int | None,
    record_ids: Sequence[str] | None = None,
    input_digests: Mapping[str, str] | None = None,
) -> ValuationResult:
    """In-run contributions as a :class:`ValuationResult` (method ``"in-run-first-order"``).

    ``params`` are the training settings that determine the values (learning rate, epochs, batch
    size, weight decay); ``seed`` is the job's seed, which fixes the batches. The values were
    computed next to torch's training, so the torch version is recorded with them.
    """
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype != np.float64:
        raise ValuationError(
            f"in-run values must be a 1-D float64 array, got shape {arr.shape} and dtype {arr.dtype}; "
            "pass InRunContributions.values or TrainOutput.contributions"
        )
    return ValuationResult(
        method=METHOD,
        params=dict(params),
        seed=seed,
        input_digests=dict(input_digests or {}),
        values=arr,
        record_ids=tuple(record_ids) if record_ids is not None else (),
        library_versions=library_versions("torch"),
    )
