"""What a train task checks of what it is given: feature rows, 0/1 labels, the validation pair and
config settings — and ``seeded_init``, the job-seeded start of its weights.

Every check raises ``TrainingError`` naming the task, the offending value and the fix, so the
messages read the same in every task that uses them. numpy only: a task imports torch itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from databright.errors import TrainingError


def features(task: str, name: str, x: Any, width: int | None = None) -> np.ndarray:
    """``x`` as a finite float64 matrix (rows × features), ``width`` columns wide when given."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise TrainingError(
            f"{task}: {name} must be a non-empty 2-D array (rows × features), got shape {arr.shape}; "
            "pass one row per record"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TrainingError(
            f"{task}: {name} has dtype {arr.dtype}; features must be real numbers — encode categorical "
            "or text columns numerically before training"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        row, column = (int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise TrainingError(
            f"{task}: {name} row {row}, column {column} is {float(arr[row, column])}; clean the data "
            "(drop or impute missing values) first"
        )
    if width is not None and arr.shape[1] != width:
        raise TrainingError(
            f"{task}: {name} has {arr.shape[1]} features, the model was trained on {width}; give it the "
            "same feature columns, in the same order, as the training data"
        )
    return arr


def binary_labels(task: str, name: str, y: Any, rows: int) -> np.ndarray:
    """``y`` as float64 0/1 labels, one per row."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != rows:
        raise TrainingError(
            f"{task}: {name} must hold one label per row ({rows}), got shape {arr.shape}; pass the label "
            "column only"
        )
    if not np.isin(arr, (0, 1)).all():
        found = sorted({str(v) for v in arr.tolist()} - {"0", "1", "0.0", "1.0", "True", "False"})
        raise TrainingError(
            f"{task}: {name} has labels {found[:5]}; this task is binary — encode the label as 0/1"
        )
    return arr.astype(np.float64)


def validation_set(
    task: str, x_val: Any, y_val: Any, read: Callable[[str, Any], np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(read("x_val", x_val), 0/1 labels)``, or ``None`` when neither is given; ``read`` checks the
    rows and puts them in the model's input space (e.g. standardised like the training rows)."""
    if x_val is None and y_val is None:
        return None
    if x_val is None or y_val is None:
        raise TrainingError(f"{task}: give both x_val and y_val, or neither")
    rows = read("x_val", x_val)
    return rows, binary_labels(task, "y_val", y_val, rows.shape[0])


def setting(
    task: str, config: Mapping[str, Any], key: str, *, integer: bool, allow_zero: bool = False
) -> float:
    """``config[key]``: a finite number > 0 (``≥ 0`` with ``allow_zero``), an integer if asked."""
    value = config.get(key)
    number = math.nan
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, int) or not integer)
    ):
        number = float(value)
    # NaN fails both comparisons, so a missing or non-numeric setting is refused here too, as is inf.
    if not ((number > 0 or (allow_zero and number == 0)) and number < math.inf):
        kind = "an integer" if integer else "a finite number"
        bound = "≥ 0" if allow_zero else "> 0"
        raise TrainingError(f"{task}: config {key}={value!r} must be {kind} {bound}")
    return number


def flag(task: str, config: Mapping[str, Any], key: str, default: bool) -> bool:
    """``config[key]`` (``default`` when absent), which must be a bool."""
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise TrainingError(f"{task}: config {key}={value!r} must be true or false")
    return value


def seeded_init(torch: Any, layers: Sequence[Any], seed: int) -> None:
    """Re-draw ``torch.nn.Linear`` layers' weights and biases exactly as torch's default
    initialisation does (``kaiming_uniform_(a=√5)``, then ``U(±1/√fan_in)`` for the bias: the same
    bits as ``torch.manual_seed(seed)`` before building them), from a generator seeded by the job.
    A private generator, not ``torch.manual_seed``: the process-wide seed is shared state, and two
    trainings in one process (a test's data-parallel ranks in threads) would race for it."""
    generator = torch.Generator().manual_seed(seed)
    for layer in layers:
        torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(layer.weight.shape[1])
        torch.nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
