"""Utilities for Monte Carlo valuation: the score of a model trained on a subset of the data.

A semivalue needs ``U(S)`` for thousands of subsets ``S``; one model per subset in a Python loop is
what makes the reference library slow. A :class:`BatchUtility` scores a batch of subsets (a boolean
``(batch, n)`` mask) in one call; :class:`FunctionUtility` wraps any set function as one.

:class:`LogisticUtility` fits an L2-regularised multinomial logistic regression to every subset of a
batch at once: ``B`` models are one ``(B, d+1, C−1)`` weight tensor, the masks weight each row's
loss, and a damped Newton step updates all models with a few large matrix products and a batched
solve. Each model starts from the full-data fit (warm start) and stops on its own once its gradient
is below ``tol``. The objective ``(1/|S|)·Σ_{i∈S} CE(y_i, softmax(x_i·W)) + (l2/2)·‖W‖²`` (last
class's logit fixed at 0, intercept penalised too) is strictly convex, so the fit is its unique
optimum whatever the start or batch, and ``U`` is a deterministic function of the subset. The empty
subset fits ``W = 0`` (uniform predictions). Scores are on the validation set: ``"accuracy"`` (a tie
between ``t`` classes including the truth counts ``1/t``, so the empty set scores ``1/C``) or
``"neg_log_loss"`` (the empty set scores ``−log C``). Parameters per model are capped at
:data:`MAX_PARAMETERS` (Newton suits small models; reduce embeddings first). torch is imported on
first use and runs on the CPU in float64 with the threads ``torch.set_num_threads`` allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from databright.errors import ValuationError
from databright.valuation.knn_shapley import array_digest

if TYPE_CHECKING:
    from torch import Tensor

MAX_PARAMETERS = 1024
SCORES = ("accuracy", "neg_log_loss")
# Elements of the largest per-chunk intermediate (about 64 MiB of float64); bounds memory per batch.
_CHUNK_ELEMENTS = 1 << 23


@runtime_checkable
class BatchUtility(Protocol):
    """``U`` over subsets of ``n`` training points, many subsets per call."""

    @property
    def n(self) -> int: ...

    @property
    def params(self) -> dict[str, Any]: ...

    @property
    def input_digests(self) -> dict[str, str]: ...

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        """``U`` of each row of a boolean ``(batch, n)`` mask, as a float64 ``(batch,)`` array."""
        ...


def check_masks(masks: Any, n: int) -> np.ndarray:
    """A boolean ``(batch, n)`` array, or a ``ValuationError`` that says what is wrong with it."""
    arr = np.asarray(masks)
    if arr.ndim == 1 and arr.shape[0] == n:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n:
        raise ValuationError(
            f"subset masks have shape {arr.shape}; give a boolean (batch, {n}) array, one row per subset"
        )
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ValuationError("subset masks must hold only True/False (or 0/1): row i marks subset i")
        arr = arr.astype(np.bool_)
    return arr


def evaluate_checked(utility: BatchUtility, masks: np.ndarray) -> np.ndarray:
    """``utility.evaluate(masks)`` as float64, refused unless it is one finite score per subset."""
    scores = np.asarray(utility.evaluate(masks), dtype=np.float64)
    if scores.shape != (masks.shape[0],):
        raise ValuationError(
            f"{utility!r} returned shape {scores.shape} for {masks.shape[0]} subsets; "
            "return one score per row"
        )
    if not np.isfinite(scores).all():
        row = int(np.argwhere(~np.isfinite(scores))[0][0])
        raise ValuationError(f"{utility!r} scored subset {row} as {scores[row]!r}; a utility must be finite")
    return scores


def _members_mask(subset: Iterable[int], n: int) -> np.ndarray:
    members = [int(i) for i in subset]
    if any(not 0 <= i < n for i in members):
        raise ValuationError(f"subset {members} has an index outside 0…{n - 1}; index the training rows")
    mask = np.zeros((1, n), dtype=np.bool_)
    mask[0, members] = True
    return mask


class FunctionUtility:
    """A set function ``fn(sorted tuple of indices) -> float`` over ``n`` points, as a batch utility."""

    def __init__(self, fn: Callable[[tuple[int, ...]], float], n: int, *, name: str | None = None) -> None:
        if not callable(fn):
            raise ValuationError(f"fn={fn!r} is not callable; pass a function of a tuple of indices")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValuationError(f"n={n!r} is not a positive integer; pass the number of training points")
        self.fn = fn
        self._n = int(n)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    @property
    def n(self) -> int:
        return self._n

    @property
    def params(self) -> dict[str, Any]:
        return {"utility": self.name}

    @property
    def input_digests(self) -> dict[str, str]:
        return {}

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        rows = check_masks(masks, self._n)
        out = np.empty(rows.shape[0], dtype=np.float64)
        for b, row in enumerate(rows):
            members = tuple(int(i) for i in np.flatnonzero(row))
            raw = self.fn(members)
            try:
                out[b] = float(raw)
            except (TypeError, ValueError) as exc:
                raise ValuationError(f"{self.name}{members} returned {raw!r}, not a number") from exc
        # Finiteness is checked once for every utility, by evaluate_checked.
        return out

    def __call__(self, subset: Iterable[int]) -> float:
        return float(self.evaluate(_members_mask(subset, self._n))[0])

    def __repr__(self) -> str:
        return f"FunctionUtility({self.name}, n={self._n})"


def _features(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValuationError(
            f"{name} must be a non-empty 2-D array (rows × features), got shape {arr.shape}; "
            "reshape a single feature with x.reshape(-1, 1)"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValuationError(f"{name} has dtype {arr.dtype}; a logistic regression needs real features")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValuationError(f"{name} row {row} holds NaN or infinity; impute or drop it before valuation")
    return arr


def _labels(name: str, y: Any, rows: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != rows:
        raise ValuationError(f"{name} has shape {arr.shape} for {rows} rows; give one label per row (1-D)")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValuationError(f"{name} holds NaN or infinity; every row needs a class label")
    return arr


class LogisticUtility:
    """Validation score of an L2-regularised logistic regression trained on each subset, batched.

    ``l2``: penalty on the mean loss; ``tol``: largest gradient entry of a fitted model; ``max_iter``:
    Newton steps per model; ``warm_start``: start from the full-data fit (``False``: from zero, same
    optimum, more steps); ``max_batch``: subsets fitted together (default: about 64 MiB per chunk).
    ``stats`` counts evaluations and Newton steps: a diagnostic, not part of any result.
    """

    def __init__(
        self,
        x_train: Any,
        y_train: Any,
        x_val: Any,
        y_val: Any,
        *,
        score: str = "accuracy",
        l2: float = 1e-2,
        tol: float = 1e-9,
        max_iter: int = 100,
        warm_start: bool = True,
        max_batch: int | None = None,
    ) -> None:
        xt, xv = _features("x_train", x_train), _features("x_val", x_val)
        yt, yv = _labels("y_train", y_train, xt.shape[0]), _labels("y_val", y_val, xv.shape[0])
        if xt.shape[1] != xv.shape[1]:
            raise ValuationError(
                f"x_train has {xt.shape[1]} features but x_val has {xv.shape[1]}; embed both the same way"
            )
        if (yt.dtype.kind in "US") != (yv.dtype.kind in "US"):
            raise ValuationError(
                f"y_train ({yt.dtype}) and y_val ({yv.dtype}) hold different kinds of labels; "
                "encode both alike"
            )
        if score not in SCORES:
            raise ValuationError(f"score={score!r} is not one of {SCORES}; pick the validation metric")
        for label, number, why in (
            ("l2", l2, "it keeps every fit unique"),
            ("tol", tol, "gradient at the optimum"),
        ):
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 < number < math.inf:
                raise ValuationError(f"{label}={number!r} must be a positive number ({why})")
        for label, value in (("max_iter", max_iter), ("max_batch", max_batch)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValuationError(f"{label}={value!r} must be a positive integer")
        classes = np.unique(np.concatenate([yt, yv]))
        if classes.shape[0] < 2:
            raise ValuationError(
                f"every label is {classes[0]!r}: with one class the utility is constant and every value is 0"
            )
        n_params = (xt.shape[1] + 1) * (classes.shape[0] - 1)
        if n_params > MAX_PARAMETERS:
            raise ValuationError(
                f"{xt.shape[1]} features × {classes.shape[0]} classes make {n_params} parameters per model, "
                f"over {MAX_PARAMETERS}; reduce the features (e.g. PCA) or use KNNShapley"
            )
        # The same keys and digests as KNNShapley's results, so receipts read alike across methods.
        arrays = {"x_train": xt, "y_train": yt, "x_test": xv, "y_test": yv}
        self._digests = {name: array_digest(arr) for name, arr in arrays.items()}
        # A column of ones makes the intercept one more weight.
        self._x = np.hstack([xt, np.ones((xt.shape[0], 1))])
        self._xv = np.hstack([xv, np.ones((xv.shape[0], 1))])
        # One-hot labels; the training side drops the reference (last) class, whose logit is fixed at 0.
        self._onehot = np.eye(classes.shape[0])[np.searchsorted(classes, yt), :-1]
        self._onehot_val = np.eye(classes.shape[0])[np.searchsorted(classes, yv)]
        self.classes = classes
        # Weights per model: (features + intercept) × free classes.
        self._q, self._k = int(self._x.shape[1]), int(classes.shape[0] - 1)
        self.score, self.l2, self.tol, self.max_iter = score, float(l2), float(tol), int(max_iter)
        self.warm_start, self.max_batch = bool(warm_start), max_batch
        self.stats = {"evaluations": 0, "newton_steps": 0, "unconverged": 0}
        self._full_fit: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self._x.shape[0])

    @property
    def params(self) -> dict[str, Any]:
        # warm_start and max_batch change the work, not the optimum, so they are not identity.
        return {
            "utility": "logistic-regression",
            "score": self.score,
            "l2": self.l2,
            "tol": self.tol,
            "max_iter": self.max_iter,
        }

    @property
    def input_digests(self) -> dict[str, str]:
        return dict(self._digests)

    def __repr__(self) -> str:
        return (
            f"LogisticUtility(n={self.n}, features={self._x.shape[1] - 1}, classes={self.classes.shape[0]}, "
            f"score={self.score!r}, l2={self.l2:g})"
        )

    def _fits(self, masks: np.ndarray) -> Iterator[Tensor]:
        """Fitted weights for consecutive chunks of the subsets, each chunk sized to bound memory."""
        import torch

        rows = check_masks(masks, self.n)
        n, q, k, m = self.n, self._q, self._k, self._xv.shape[0]
        per_subset = max(n * (4 * k + k * k + 2), 3 * (q * k) ** 2, m * (k + 1) * 3)
        step = self.max_batch or max(1, min(4096, _CHUNK_ELEMENTS // per_subset))
        for start in range(0, rows.shape[0], step):
            yield self._fit(torch.from_numpy(rows[start : start + step]).to(torch.float64))

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        """Validation score of a model trained on each subset (rows of a boolean mask)."""
        scores = np.concatenate([np.empty(0), *(self._score(w).numpy() for w in self._fits(masks))])
        self.stats["evaluations"] += int(scores.shape[0])
        return scores

    def fit(self, masks: np.ndarray) -> np.ndarray:
        """Fitted weights of each subset's model, ``(batch, features + 1, classes − 1)``; the last
        feature row is the intercept."""
        return np.concatenate([np.empty((0, self._q, self._k)), *(w.numpy() for w in self._fits(masks))])

    def __call__(self, subset: Iterable[int]) -> float:
        """``U`` of one subset given by its member indices (what exact enumeration calls)."""
        return float(self.evaluate(_members_mask(subset, self.n))[0])

    def full_fit(self) -> np.ndarray:
        """Weights fitted on every training point: the warm start of every subset's model."""
        import torch

        if self._full_fit is None:
            start = torch.zeros((1, self._q, self._k), dtype=torch.float64)
            everything = torch.ones((1, self.n), dtype=torch.float64)
            self._full_fit = self._newton(everything, start).numpy()[0]
        return self._full_fit

    def _fit(self, mask: Tensor) -> Tensor:
        import torch

        batch = mask.shape[0]
        if self.warm_start:
            start = torch.from_numpy(self.full_fit()).expand(batch, self._q, self._k).clone()
        else:
            start = torch.zeros((batch, self._q, self._k), dtype=torch.float64)
        return self._newton(mask, start)

    @staticmethod
    def _loss_terms(x: Tensor, onehot: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-row cross-entropy ``(B, rows)``, the free classes' probabilities and logits ``(B, rows, K)``.

        The reference class's logit is 0, so log-sum-exp is taken against it by hand: softmax and
        logsumexp over a last axis of two or three entries are slow in torch.
        """
        import torch

        logits = torch.matmul(x, w)
        if logits.shape[-1] == 1:
            # Binary: a reduction over a last axis of length one is slow in torch, so none is taken.
            z = logits.squeeze(-1)
            return torch.nn.functional.softplus(z) - z * onehot[:, 0], torch.sigmoid(z).unsqueeze(-1), logits
        top = logits.amax(dim=-1).clamp(min=0.0)
        exp = torch.exp(logits - top.unsqueeze(-1))
        total = exp.sum(dim=-1) + torch.exp(-top)
        lse = top + torch.log(total)
        return lse - (logits * onehot).sum(dim=-1), exp / total.unsqueeze(-1), logits

    def _newton(self, mask: Tensor, w: Tensor) -> Tensor:
        import torch

        x, onehot = torch.from_numpy(self._x), torch.from_numpy(self._onehot)
        q, k = self._q, self._k
        size = mask.sum(dim=1)
        # The empty subset's optimum is exactly 0: set, not solved, so its predictions are exactly uniform.
        w[size == 0] = 0.0
        active = torch.nonzero(size > 0).squeeze(1)
        wa, ma, sa = w[active], mask[active], size[active]
        loss, probs, _ = self._loss_terms(x, onehot, wa)
        for step in range(self.max_iter + 1):
            if active.numel() == 0:
                break
            grad = torch.matmul(x.T, ma.unsqueeze(-1) * (probs - onehot)) / sa[:, None, None] + self.l2 * wa
            moving = grad.abs().amax(dim=(1, 2)) > self.tol
            # Each model stops on its own, so its fit does not depend on which others share the batch.
            w[active[~moving]] = wa[~moving]
            active, wa, ma, sa = active[moving], wa[moving], ma[moving], sa[moving]
            loss, probs, grad = loss[moving], probs[moving], grad[moving]
            if step == self.max_iter or active.numel() == 0:
                break
            self.stats["newton_steps"] += int(active.numel())
            g = grad.reshape(-1, q * k)
            hess = self._hessian(x, ma / sa[:, None], probs)
            direction = torch.linalg.solve(hess, g.unsqueeze(-1)).squeeze(-1)
            f0 = (ma * loss).sum(dim=1) / sa + 0.5 * self.l2 * wa.square().sum(dim=(1, 2))
            decrement = (g * direction).sum(dim=1)
            wa, loss, probs = self._line_search(
                ma, sa, wa, direction.reshape(-1, q, k), f0, decrement, loss, probs
            )
        w[active] = wa
        self.stats["unconverged"] += int(active.numel())
        return w

    def _hessian(self, x: Tensor, weight: Tensor, probs: Tensor) -> Tensor:
        """``Σ_i weight_i · (x_i x_iᵀ) ⊗ (diag(p_i) − p_i p_iᵀ) + l2·I`` for each model, ``(B, qK, qK)``.

        Every model's curvature is contracted with the rows' outer products ``x_i x_iᵀ`` in one large
        matrix product, which runs far faster than a batch of small ``Xᵀ·diag·X`` products; the outer
        products are formed a block of rows at a time so their memory stays bounded.
        """
        import torch

        batch, n = weight.shape
        q, k = self._q, self._k
        pairs = [(a, b) for a in range(k) for b in range(a, k)]
        # Softmax curvature between free classes a and b: p_a·(δ_ab − p_b), weighted by membership.
        curv = torch.stack(
            [probs[..., a] * (float(a == b) - probs[..., b]) * weight for a, b in pairs], dim=1
        )
        flat = x.new_zeros((batch * len(pairs), q * q))
        rows = max(1, _CHUNK_ELEMENTS // (8 * q * q))
        for start in range(0, n, rows):
            xs = x[start : start + rows]
            outer = (xs.unsqueeze(2) * xs.unsqueeze(1)).reshape(-1, q * q)
            flat += curv[..., start : start + rows].reshape(batch * len(pairs), -1) @ outer
        blocks = flat.reshape(batch, len(pairs), q, q)
        if k == 1:
            hess = blocks[:, 0]
        else:
            full = x.new_zeros((batch, q, k, q, k))
            for index, (a, b) in enumerate(pairs):
                full[:, :, a, :, b] = blocks[:, index]
                full[:, :, b, :, a] = blocks[:, index]
            hess = full.reshape(batch, q * k, q * k)
        return hess + self.l2 * torch.eye(q * k, dtype=hess.dtype)

    def _line_search(
        self,
        mask: Tensor,
        size: Tensor,
        w: Tensor,
        direction: Tensor,
        f0: Tensor,
        decrement: Tensor,
        loss: Tensor,
        probs: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Backtracking (Armijo) on each model: the full Newton step where it decreases the objective
        enough, halved until it does elsewhere (far from the optimum a full step can overshoot).

        Returns the new weights with their per-row losses and probabilities, which the next Newton
        step reuses instead of recomputing them.
        """
        import torch

        x, onehot = torch.from_numpy(self._x), torch.from_numpy(self._onehot)
        # Rounding in f near the optimum can exceed the predicted decrease; allow a few ulps of f.
        slack = 64 * torch.finfo(torch.float64).eps * f0.abs()
        step = torch.ones_like(f0)
        pending = torch.arange(w.shape[0])
        out, out_loss, out_probs = w.clone(), loss.clone(), probs.clone()
        # A model whose step never passes keeps its weights and shows up in stats["unconverged"].
        for _ in range(40):
            trial = w[pending] - step[pending, None, None] * direction[pending]
            trial_loss, trial_probs, _ = self._loss_terms(x, onehot, trial)
            f = (mask[pending] * trial_loss).sum(dim=1) / size[pending]
            f = f + 0.5 * self.l2 * trial.square().sum(dim=(1, 2))
            ok = f <= f0[pending] - 1e-4 * step[pending] * decrement[pending] + slack[pending]
            out[pending[ok]] = trial[ok]
            out_loss[pending[ok]] = trial_loss[ok]
            out_probs[pending[ok]] = trial_probs[ok]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
            step[pending] *= 0.5
        return out, out_loss, out_probs

    def _score(self, w: Tensor) -> Tensor:
        import torch

        xv, onehot = torch.from_numpy(self._xv), torch.from_numpy(self._onehot_val)
        loss, _, logits = self._loss_terms(xv, onehot[:, :-1], w)
        if self.score == "neg_log_loss":
            return -loss.mean(dim=1)
        logits = torch.cat([logits, logits.new_zeros((*logits.shape[:-1], 1))], dim=-1)
        top = logits == logits.amax(dim=-1, keepdim=True)
        hit = (top.to(torch.float64) * onehot).sum(dim=-1)
        return (hit / top.sum(dim=-1).to(torch.float64)).mean(dim=1)
