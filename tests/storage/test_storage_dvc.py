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


def test_an_s3_remote_keeps_its_secrets_in_config_local(settings: Settings) -> None:
    from dvc.config import Config

    workspace = settings.workspace_dir
    remote = dvc_versions.DvcRemote(
        "s3://bucket/prefix/dvc",
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-1",
        access_key_id="AKID",
        secret_access_key="s3cr3t",
    )
    dvc_versions.init_workspace(workspace, remote)
    config, local = (
        (workspace / ".dvc" / "config").read_text(),
        (workspace / ".dvc" / "config.local").read_text(),
    )
    assert "url = s3://bucket/prefix/dvc" in config and "endpointurl = http://127.0.0.1:9000" in config
    assert "s3cr3t" not in config and "AKID" not in config
    assert "secret_access_key = s3cr3t" in local and "access_key_id = AKID" in local
    merged = Config(dvc_dir=str(workspace / ".dvc"))["remote"][dvc_versions.REMOTE_NAME]
    assert (merged["url"], merged["endpointurl"], merged["secret_access_key"]) == (
        "s3://bucket/prefix/dvc",
        "http://127.0.0.1:9000",
        "s3cr3t",
    )
    # Idempotent, and switching back to a folder drops the S3 options and the secrets.
    stamp = (workspace / ".dvc" / "config").stat().st_mtime_ns
    dvc_versions.init_workspace(workspace, remote)
    assert (workspace / ".dvc" / "config").stat().st_mtime_ns == stamp
    dvc_versions.init_workspace(workspace, settings.dvc_remote_dir)
    assert "s3cr3t" not in (workspace / ".dvc" / "config.local").read_text()
    merged = Config(dvc_dir=str(workspace / ".dvc"))["remote"][dvc_versions.REMOTE_NAME]
    assert merged["url"] == str(settings.dvc_remote_dir.resolve()) and "endpointurl" not in merged


def test_lost_dvc_files_are_rewritten_from_the_md5_and_pulled_together(settings: Settings) -> None:
    workspace = settings.workspace_dir
    dvc_versions.init_workspace(workspace, settings.dvc_remote_dir)
    contents = {}
    md5s = {}
    for version in (1, 2):
        folder = workspace / "datasets" / "demo" / f"v{version}"
        folder.mkdir(parents=True)
        contents[version] = {"records.parquet": f"rows of v{version}".encode(), "manifest.json": b"{}"}
        for name, data in contents[version].items():
            (folder / name).write_bytes(data)
        md5s[version] = dvc_versions.track_and_push(workspace, folder)
    shutil.rmtree(workspace / "datasets")
    shutil.rmtree(workspace / ".dvc" / "cache")
    for version in (1, 2):
        dvc_versions.ensure_tracked(workspace, f"datasets/demo/v{version}", md5s[version])
    dvc_versions.pull(workspace, ["datasets/demo/v1", "datasets/demo/v2"])
    for version in (1, 2):
        folder = workspace / "datasets" / "demo" / f"v{version}"
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == contents[version]
    dvc_versions.ensure_tracked(workspace, "datasets/demo/v1", md5s[1])  # present and right: a no-op
    with pytest.raises(StorageError, match=r"v1\.dvc names md5 .*, the registry says 0+\.dir"):
        dvc_versions.ensure_tracked(workspace, "datasets/demo/v1", "0" * 32 + ".dir")
