"""Exact KNN-Shapley values of a job's training records, computed inside an attested worker.

Records are valued in the space the model reads them in: when the trained model's state holds
``feature_mean`` and ``feature_std`` (as ``tabular_logreg``'s does), features are standardised with
exactly those float64 vectors, so the neighbours are the model's neighbours; otherwise the raw
features are used, and the parameters say which. With ``replication_robust`` (the default) every
near-duplicate group of the version's manifest is one player whose value its members share
(``databright.valuation.ReplicationRobust``), so an owner gains nothing by contributing copies.
The values are exact and deterministic: no seed is used, and the same inputs give the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from databright.errors import TrainingError
from databright.valuation import KNNShapley, RecordGroups, ReplicationRobust, ValuationResult

SPLITS = ("owners", "members")


def _embedding(model_state: bytes, width: int) -> tuple[str, Any]:
    """The model's input standardisation, as a function on feature rows, and its name."""
    import torch

    try:
        state = torch.load(io.BytesIO(model_state), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"knn_shapley: the model state cannot be read by torch.load ({exc})") from exc
    if not isinstance(state, dict) or "feature_mean" not in state or "feature_std" not in state:
        return "raw features", lambda rows: rows
    mean = state["feature_mean"].numpy().astype(np.float64)
    std = state["feature_std"].numpy().astype(np.float64)
    if mean.shape != (width,) or std.shape != (width,) or not (std > 0).all():
        raise TrainingError(
            f"knn_shapley: the model's feature_mean/feature_std have shapes {mean.shape}/{std.shape} "
            f"(std > 0: {bool((std > 0).all())}); the data has {width} features"
        )
    return "model feature standardisation", lambda rows: (rows - mean) / std


def value(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    config: Mapping[str, Any],
    seed: int,
    model_state: bytes,
    record_ids: Sequence[str],
    owners: Sequence[str],
    near_duplicate_groups: Sequence[Sequence[str]],
    input_digests: Mapping[str, str],
) -> ValuationResult:
    """Per-record values of ``(x, y)`` against ``(x_val, y_val)``, in row order (``seed`` is unused)."""
    k = config.get("k")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TrainingError(f"knn_shapley: config k={k!r} must be a positive integer")
    split = config.get("split")
    if split not in SPLITS:
        raise TrainingError(f"knn_shapley: config split={split!r} must be one of {SPLITS}")
    robust = config.get("replication_robust")
    if not isinstance(robust, bool):
        raise TrainingError(f"knn_shapley: config replication_robust={robust!r} must be true or false")

    name, embed = _embedding(model_state, int(np.asarray(x).shape[1]))
    x_embedded, x_val_embedded = (
        embed(np.asarray(x, dtype=np.float64)),
        embed(np.asarray(x_val, dtype=np.float64)),
    )
    base = KNNShapley(k=k)
    valuator: Any = base
    if robust:
        valuator = ReplicationRobust(
            base, RecordGroups(record_ids, owners, near_duplicate_groups, split=split)
        )
    result = valuator.valuate(
        x_embedded, y, x_val_embedded, y_val, record_ids=record_ids, input_digests=dict(input_digests)
    )
    # The embedding is a parameter of the method as run here; replace() re-derives the digest.
    return dataclasses.replace(result, params={**result.params, "embedding": name})
