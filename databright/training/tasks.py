"""Enclave tasks as the runner sees them: a measured folder with a manifest and a ``train`` function.

A task folder ``enclave_tasks/<name>/`` holds ``manifest.yaml`` (name, entrypoint, model, the
identity it is attested under — ``signer_id``, ``product_id``, ``svn`` — and ``config`` defaults)
and the entrypoint module, which defines::

    def train(x, y, config, seed, x_val=None, y_val=None) -> TrainOutput

``TrainOutput`` is what every task hands back: the model's bytes, the exact per-record visit
counts (from a ``UsageMeter``), the embedding in which records are valued, the validation
accuracy, the model cost per sample visit and, when the task measured them, each record's in-run
contribution to the validation loss (``databright.valuation.inrun``).

The entrypoint is executed from its source bytes, not imported through the import system, so no
``__pycache__`` is ever written into the measured folder and the code that runs is the code that
was read.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from databright.errors import ConfigError, TrainingError
from databright.trust.measurement import find_task, load_task_config


@dataclass(frozen=True)
class TrainOutput:
    """What an enclave task's ``train`` returns.

    ``contributions`` is ``None`` when the task did not measure in-run contributions (it was not
    given a validation set, or its config turned them off); otherwise one float64 per record, in
    dataset order: the summed first-order decrease of the validation loss that the record's
    gradient caused over the steps that read it (``InRunContributions.values``), ``0.0`` for a
    record never read.
    """

    model_state: bytes
    visits: np.ndarray
    embed: Callable[[np.ndarray], np.ndarray]
    validation_accuracy: float | None
    model_cost: int
    contributions: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_state, bytes) or not self.model_state:
            raise TrainingError("the task returned no model bytes; train must serialise its model state")
        visits = np.asarray(self.visits)
        if visits.ndim != 1 or not np.issubdtype(visits.dtype, np.integer) or (visits < 0).any():
            raise TrainingError(
                f"the task returned visits of shape {visits.shape} and dtype {visits.dtype}; "
                "return UsageMeter.visits (one non-negative integer per record)"
            )
        if isinstance(self.model_cost, bool) or not isinstance(self.model_cost, int) or self.model_cost < 1:
            raise TrainingError(f"model_cost {self.model_cost!r} must be a positive integer")
        object.__setattr__(self, "visits", visits.astype(np.int64, copy=False))
        if self.contributions is not None:
            object.__setattr__(self, "contributions", _checked_contributions(self.contributions, visits))

    @property
    def total_visits(self) -> int:
        return int(self.visits.sum())


def _checked_contributions(contributions: Any, visits: np.ndarray) -> np.ndarray:
    values = np.asarray(contributions)
    if values.ndim != 1 or values.dtype != np.float64:
        raise TrainingError(
            f"the task returned contributions of shape {values.shape} and dtype {values.dtype}; "
            "return InRunContributions.values (one float64 per record), or None"
        )
    if values.shape != visits.shape:
        raise TrainingError(
            f"the task returned {values.shape[0]} contributions for {visits.shape[0]} metered records; "
            "size InRunContributions with the number of rows it was given"
        )
    if not np.isfinite(values).all():
        row = int(np.argwhere(~np.isfinite(values))[0][0])
        raise TrainingError(
            f"the contribution of record {row} is {float(values[row])!r}; training diverged — lower the "
            "learning rate or clean the data"
        )
    unread = np.flatnonzero((visits == 0) & (values != 0))
    if unread.size:
        row = int(unread[0])
        raise TrainingError(
            f"record {row} was never read but has contribution {float(values[row])!r}; a task may "
            "credit only the rows it metered"
        )
    return values


@dataclass(frozen=True)
class TaskIdentity:
    """The identity an enclave task is attested under (from its manifest)."""

    signer_id: str
    product_id: int
    svn: int


@dataclass(frozen=True)
class EnclaveTask:
    """A loaded task: its folder, parsed manifest, default config and ``train`` function."""

    name: str
    path: Path
    manifest: dict[str, Any]
    defaults: dict[str, Any]
    train: Callable[..., TrainOutput]

    @property
    def identity(self) -> TaskIdentity:
        return task_identity(self.manifest, self.path)

    def resolve_config(self, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        return resolve_config(self.defaults, overrides, task=self.name)


def task_identity(manifest: Mapping[str, Any], path: Path) -> TaskIdentity:
    signer_id = manifest.get("signer_id")
    product_id = manifest.get("product_id")
    svn = manifest.get("svn")
    if not isinstance(signer_id, str) or not signer_id:
        raise ConfigError(f"{path}/manifest.yaml: signer_id {signer_id!r} must be a non-empty string")
    for field, value in (("product_id", product_id), ("svn", svn)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{path}/manifest.yaml: {field} {value!r} must be a non-negative integer")
    assert isinstance(product_id, int) and isinstance(svn, int)
    return TaskIdentity(signer_id=signer_id, product_id=product_id, svn=svn)


def resolve_config(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None, *, task: str = "task"
) -> dict[str, Any]:
    """Defaults updated by overrides; unknown keys and values of the wrong kind are refused."""
    config = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise TrainingError(
                f"config key {key!r} is not a setting of enclave task {task!r}; "
                f"known settings: {sorted(defaults)}"
            )
        default = defaults[key]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(default, bool) and isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int)
        elif isinstance(default, float):
            ok = isinstance(value, int | float)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise TrainingError(
                f"config {key}={value!r} has the wrong type for enclave task {task!r}: "
                f"expected {type(default).__name__} like the default {default!r}"
            )
        config[key] = value
    return config


def _entrypoint(path: Path, manifest: Mapping[str, Any]) -> Path:
    entry = manifest.get("entrypoint")
    if not isinstance(entry, str) or not entry.endswith(".py"):
        raise ConfigError(f"{path}/manifest.yaml: entrypoint {entry!r} must name a .py file in the task")
    rel = PurePosixPath(entry)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"{path}/manifest.yaml: entrypoint {entry!r} must stay inside the task folder")
    file = path.joinpath(*rel.parts)
    if not file.is_file():
        raise ConfigError(f"{path}/manifest.yaml: entrypoint {entry!r} does not exist in {path}")
    return file


KINDS = ("train", "value")


def _execute(tasks_dir: Path, name: str, kind: str) -> tuple[Path, dict[str, Any], dict[str, Any], Any]:
    """Read ``tasks_dir/<name>``'s manifest, check it is a ``kind`` task and execute its entrypoint:
    its folder, manifest, config defaults and the module holding its functions."""
    path = find_task(Path(tasks_dir), name)
    manifest = load_task_config(path)
    defaults = manifest.get("config", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}/manifest.yaml: config must be a mapping of defaults, got {defaults!r}")
    declared = manifest.get("kind", "train")
    if declared not in KINDS:
        raise ConfigError(f"{path}/manifest.yaml: kind {declared!r} must be one of {KINDS}")
    if declared != kind:
        raise TrainingError(
            f"enclave task {name!r} is a {declared} task, but a {kind} task was asked for; "
            + (
                "train with a train task such as tabular_logreg"
                if kind == "train"
                else "value with knn_shapley"
            )
        )
    task_identity(manifest, path)
    file = _entrypoint(path, manifest)
    module_name = f"_databright_enclave_task_{name.replace('-', '_').replace('.', '_')}"
    module = types.ModuleType(module_name)
    module.__file__ = str(file)
    # Registered while it executes so that dataclasses and pickling inside the task can find it.
    sys.modules[module_name] = module
    try:
        code = compile(file.read_bytes(), str(file), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise TrainingError(
            f"enclave task {name!r}: executing {file.name} failed with {type(exc).__name__}: {exc}; "
            "fix the task code (its measurement changes with it)"
        ) from exc
    function = getattr(module, kind, None)
    if not callable(function):
        signature = "train(x, y, config, seed)" if kind == "train" else "value(x, y, x_val, y_val, ...)"
        raise TrainingError(f"enclave task {name!r}: {file.name} defines no {signature} function")
    return path, manifest, dict(defaults), function


def load_task(tasks_dir: Path, name: str) -> EnclaveTask:
    """Read ``tasks_dir/<name>``'s manifest and execute its entrypoint; return its ``train``."""
    path, manifest, defaults, train = _execute(tasks_dir, name, "train")
    return EnclaveTask(name=name, path=path, manifest=manifest, defaults=defaults, train=train)


@dataclass(frozen=True)
class ValueTask:
    """A loaded value task (manifest ``kind: value``): its ``value`` function returns a
    ``ValuationResult`` for every training record, in dataset order."""

    name: str
    path: Path
    manifest: dict[str, Any]
    defaults: dict[str, Any]
    value: Callable[..., Any]

    @property
    def identity(self) -> TaskIdentity:
        return task_identity(self.manifest, self.path)

    def resolve_config(self, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        return resolve_config(self.defaults, overrides, task=self.name)


def load_value_task(tasks_dir: Path, name: str) -> ValueTask:
    """Read ``tasks_dir/<name>``'s manifest (``kind: value``) and execute its entrypoint."""
    path, manifest, defaults, value = _execute(tasks_dir, name, "value")
    return ValueTask(name=name, path=path, manifest=manifest, defaults=defaults, value=value)
