"""The DVC boundary: a version folder is added, pushed to the local remote, and pulled back."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from databright.config import Settings
from databright.errors import StorageError
from databright.storage import dvc_versions


def _remote_object(remote: Path, md5: str) -> Path:
    """Where DVC 3 keeps an object in a remote: files/md5/<first two hex>/<rest>."""
    return remote / "files" / "md5" / md5[:2] / md5[2:]


def test_track_push_and_pull_restore_the_folder(settings: Settings) -> None:
    workspace, remote = settings.workspace_dir, settings.dvc_remote_dir
    dvc_versions.init_workspace(workspace, remote)
    dvc_versions.init_workspace(workspace, remote)  # idempotent
    config = (workspace / ".dvc" / "config").read_text()
    assert "no_scm = True" in config and "analytics = False" in config and str(remote.resolve()) in config

    folder = workspace / "datasets" / "demo" / "v1"
    folder.mkdir(parents=True)
    files = {"records.parquet": b"PAR1 pretend rows " * 50, "manifest.json": b'{"version":1}'}
    for name, data in files.items():
        (folder / name).write_bytes(data)

    md5 = dvc_versions.track_and_push(workspace, "datasets/demo/v1")
    assert md5.endswith(".dir") and len(md5) == 32 + 4
    assert dvc_versions.dvc_file(workspace, folder) == workspace / "datasets" / "demo" / "v1.dvc"
    # The remote holds every file under its own md5 (computed here independently) and the listing.
    for data in files.values():
        assert _remote_object(remote, hashlib.md5(data).hexdigest()).read_bytes() == data
    assert _remote_object(remote, md5).is_file()

    # Lose the workspace copy AND the local cache: only the remote can bring the files back.
    shutil.rmtree(folder)
    shutil.rmtree(workspace / ".dvc" / "cache")
    dvc_versions.pull(workspace, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


def test_untrack_removes_folder_and_dvc_file(settings: Settings) -> None:
    workspace = settings.workspace_dir
    dvc_versions.init_workspace(workspace, settings.dvc_remote_dir)
    folder = workspace / "datasets" / "x" / "v1"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    dvc_versions.track_and_push(workspace, folder)
    dvc_versions.untrack(workspace, folder)
    assert not folder.exists() and not dvc_versions.dvc_file(workspace, folder).exists()


def test_errors_are_storage_errors(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "plain" / "x").mkdir(parents=True)
    with pytest.raises(StorageError, match="not a DVC workspace"):
        dvc_versions.track_and_push(tmp_path / "plain", "x")
    dvc_versions.init_workspace(settings.workspace_dir, settings.dvc_remote_dir)
    with pytest.raises(StorageError, match="outside the DVC workspace"):
        dvc_versions.track_and_push(settings.workspace_dir, tmp_path)
    with pytest.raises(StorageError, match="is not a folder"):
        dvc_versions.track_and_push(settings.workspace_dir, "datasets/none/v1")
    with pytest.raises(StorageError, match="is not tracked"):
        dvc_versions.pull(settings.workspace_dir, "datasets/none/v1")
