"""Task measurement: deterministic, independent of caches, and sensitive to every byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from databright.errors import ConfigError
from databright.trust import find_task, measure_task, task_manifest


def make_task(root: Path, name: str = "toy_task") -> Path:
    task = root / name
    (task / "lib").mkdir(parents=True)
    (task / "manifest.yaml").write_text(f"name: {name}\nentry: main.py\nparams:\n  epochs: 3\n  lr: 0.1\n")
    (task / "main.py").write_text("def run():\n    return 42\n")
    (task / "lib" / "util.py").write_text("X = 1\n")
    (task / "requirements.lock").write_text("torch==2.13.0\n")
    return task


def independent_measurement(task: Path) -> str:
    """The documented recipe, written out with hashlib and json directly."""
    files = []
    for path in sorted(p for p in task.rglob("*") if p.is_file()):
        rel = path.relative_to(task).as_posix()
        if "__pycache__" in rel.split("/") or rel.endswith(".pyc"):
            continue
        files.append([rel, hashlib.sha256(path.read_bytes()).hexdigest()])
    files.sort()
    manifest = {
        "task": task.name,
        "files": files,
        "config": {"name": task.name, "entry": "main.py", "params": {"epochs": 3, "lr": 0.1}},
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def test_measurement_matches_the_documented_recipe(tmp_path):
    task = make_task(tmp_path)
    measurement = measure_task(task)
    assert len(measurement) == 64 and int(measurement, 16) >= 0
    assert measurement == independent_measurement(task)
    manifest = task_manifest(task)
    assert [rel for rel, _ in manifest["files"]] == [
        "lib/util.py",
        "main.py",
        "manifest.yaml",
        "requirements.lock",
    ]


def test_measurement_is_stable_across_copies_and_ignores_caches(tmp_path):
    a = make_task(tmp_path / "a")
    b = make_task(tmp_path / "b")
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00\x01")
    (b / "lib" / "util.cpython-311.pyc").write_bytes(b"\x02")
    assert measure_task(a) == measure_task(b)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_changing_one_byte_of_any_file_changes_the_measurement(tmp_path_factory, data):
    task = make_task(tmp_path_factory.mktemp("t"))
    before = measure_task(task)
    files = sorted(p for p in task.rglob("*") if p.is_file() and p.name != "manifest.yaml")
    path = data.draw(st.sampled_from(files))
    content = bytearray(path.read_bytes())
    index = data.draw(st.integers(min_value=0, max_value=len(content) - 1))
    content[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    path.write_bytes(bytes(content))
    assert measure_task(task) != before


@pytest.mark.parametrize(
    "change",
    [
        lambda t: (t / "extra.txt").write_text(""),  # a new empty file
        lambda t: (t / "main.py").rename(t / "main2.py"),  # a rename
        lambda t: (t / "manifest.yaml").write_text("name: toy_task\nentry: main.py\nparams:\n  epochs: 4\n"),
        lambda t: (t / "manifest.yaml").write_text(  # same config, different bytes: still a different file
            "name: toy_task\nentry: main.py\nparams: {epochs: 3, lr: 0.1}\n"
        ),
    ],
)
def test_files_and_config_are_both_measured(tmp_path, change):
    task = make_task(tmp_path)
    before = measure_task(task)
    change(task)
    assert measure_task(task) != before


def test_task_without_manifest_is_refused(tmp_path):
    task = make_task(tmp_path)
    (task / "manifest.yaml").unlink()
    with pytest.raises(ConfigError, match=r"no manifest\.yaml"):
        measure_task(task)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: someone_else\n", "make them agree"),
        ("name: toy_task\nwhen: 2026-11-03\n", "no canonical JSON form"),
        ("name: toy_task\nx: .nan\n", "no canonical JSON form"),
    ],
)
def test_bad_manifest_is_refused(tmp_path, text, message):
    task = make_task(tmp_path)
    (task / "manifest.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        measure_task(task)


def test_missing_task_dir_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        measure_task(tmp_path / "nope")


def test_find_task_resolves_names_and_refuses_escapes(tmp_path):
    task = make_task(tmp_path)
    assert find_task(tmp_path, "toy_task") == task
    with pytest.raises(ConfigError, match="not allowed"):
        find_task(tmp_path, "../toy_task")
    with pytest.raises(ConfigError, match="known tasks: \\['toy_task'\\]"):
        find_task(tmp_path, "missing")
