"""Enclave tasks as the runner sees them: a measured folder with a manifest and a ``train`` function.

A task folder ``enclave_tasks/<name>/`` holds ``manifest.yaml`` (name, entrypoint, model, the
identity it is attested under — ``signer_id``, ``product_id``, ``svn`` — and ``config`` defaults)
and the entrypoint module, which defines::

    def train(x, y, config, seed, x_val=None, y_val=None) -> TrainOutput

``TrainOutput`` is what every task hands back: the model's bytes, the exact per-record visit
counts (from a ``UsageMeter``), the embedding in which records are valued, the validation
accuracy and the model cost per sample visit.

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
    """What an enclave task's ``train`` returns."""

    model_state: bytes
    visits: np.ndarray
    embed: Callable[[np.ndarray], np.ndarray]
    validation_accuracy: float | None
    model_cost: int

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

    @property
    def total_visits(self) -> int:
        return int(self.visits.sum())


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


def load_task(tasks_dir: Path, name: str) -> EnclaveTask:
    """Read ``tasks_dir/<name>``'s manifest and execute its entrypoint; return its ``train``."""
    path = find_task(Path(tasks_dir), name)
    manifest = load_task_config(path)
    defaults = manifest.get("config", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}/manifest.yaml: config must be a mapping of defaults, got {defaults!r}")
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
    train = getattr(module, "train", None)
    if not callable(train):
        raise TrainingError(
            f"enclave task {name!r}: {file.name} defines no train(x, y, config, seed) function"
        )
    return EnclaveTask(name=name, path=path, manifest=manifest, defaults=dict(defaults), train=train)
