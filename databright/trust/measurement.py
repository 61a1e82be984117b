"""Measurement of an enclave task: one digest that names exactly the code and config that will run.

An enclave task is a folder ``enclave_tasks/<name>/`` holding its code and a ``manifest.yaml``.
Its measurement is the hex sha256 of the canonical JSON of::

    {"task": <folder name>,
     "files": [[<relative posix path>, <sha256 hex>], ...],   # sorted by path
     "config": <parsed manifest.yaml>}

Every file counts (the manifest, a dependency lock, data files shipped with the code) except
interpreter caches (``__pycache__/``, ``*.pyc``), which differ between machines running the same
code. Changing one byte of one file, adding or renaming a file, or editing the config changes the
measurement, so an appraisal policy that names a measurement names exactly one version of a task.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from databright.crypto import canonical_json, digest_file, sha256_hex
from databright.errors import ConfigError

MANIFEST_NAME = "manifest.yaml"
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _skipped(name: str) -> bool:
    return name == "__pycache__" or name.endswith(".pyc")


def find_task(tasks_root: Path, name: str) -> Path:
    """The folder of task ``name`` under ``tasks_root``, refusing names that could climb out of it."""
    if not _TASK_NAME.match(name):
        raise ConfigError(
            f"enclave task name {name!r} is not allowed: use letters, digits, '_', '.' and '-' "
            f"(the folder name under {tasks_root})"
        )
    path = tasks_root / name
    if not path.is_dir():
        known = sorted(p.name for p in tasks_root.iterdir() if p.is_dir()) if tasks_root.is_dir() else []
        raise ConfigError(f"no enclave task {name!r} in {tasks_root}; known tasks: {known or 'none'}")
    return path


def load_task_config(task_path: Path) -> dict[str, Any]:
    """The parsed ``manifest.yaml`` of a task: a mapping of plain JSON values."""
    manifest = task_path / MANIFEST_NAME
    if not manifest.is_file():
        raise ConfigError(
            f"enclave task {task_path} has no {MANIFEST_NAME}; every task declares its entry point "
            f"and config there"
        )
    try:
        config = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{manifest} is not valid YAML ({exc}); fix the file") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{manifest} holds a {type(config).__name__}, expected a mapping of settings")
    try:
        canonical_json(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{manifest} has a value with no canonical JSON form ({exc}); quote dates and avoid "
            f".nan/.inf so the config can be measured"
        ) from exc
    declared = config.get("name")
    if declared is not None and declared != task_path.name:
        raise ConfigError(
            f"{manifest} says name {declared!r} but lives in folder {task_path.name!r}; make them agree"
        )
    return config


def task_files(task_path: Path) -> list[tuple[str, str]]:
    """``(relative posix path, sha256 hex)`` of every measured file, sorted by path."""
    entries: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(task_path):
        # Pruning in place keeps os.walk out of cache folders entirely.
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        for filename in filenames:
            if _skipped(filename):
                continue
            path = Path(dirpath) / filename
            if not path.is_file():
                continue
            entries.append((path.relative_to(task_path).as_posix(), digest_file(path)))
    return sorted(entries)


def task_manifest(task_path: Path) -> dict[str, Any]:
    """The canonical manifest whose digest is the task's measurement."""
    if not task_path.is_dir():
        raise ConfigError(f"enclave task folder {task_path} does not exist; check the path or task name")
    config = load_task_config(task_path)
    return {
        "task": task_path.name,
        "files": [[rel, digest] for rel, digest in task_files(task_path)],
        "config": config,
    }


def measure_task(task_dir: Path) -> str:
    """Hex sha256 of the canonical manifest of ``task_dir`` (see the module docstring)."""
    return sha256_hex(canonical_json(task_manifest(task_dir)))
