"""The DVC boundary: dataset version folders tracked in a DVC workspace and pushed to a remote.

The workspace (``Settings.workspace_dir``) is a DVC repository initialised with ``no_scm=True``
(DataBright's registry, not git, records which version is which); its default remote is the
local directory ``Settings.dvc_remote`` — the embedded object store — or, when an S3 bucket is
configured, a ``DvcRemote`` such as ``s3://bucket/prefix/dvc`` with its ``endpointurl`` (dvc-s3).
Credentials go to ``.dvc/config.local``, DVC's place for secrets, never to ``.dvc/config``.
Analytics are off in the repository config, DVC's site cache lives inside the workspace, and DVC's
own log lines are silenced while we call it.

Every DVC exception is translated here into ``StorageError``; nothing else imports DVC. DVC is
imported lazily: ``dvc.repo`` costs about half a second.

Cost, measured on the development machine (local remote): ``import dvc.repo`` takes about 0.6 s and
the first ``track_and_push`` in a process about 2.3 s more, because DVC loads its data layer
lazily; after that, ``add`` + ``push`` of a version folder takes about 0.1-0.3 s, whether it holds
6 KB or a 14 MB delta of 100k rows. A long-lived worker or flow process pays the first cost once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.errors import StorageError

if TYPE_CHECKING:
    from dvc.repo import Repo

REMOTE_NAME = "exchange"


@dataclass(frozen=True)
class DvcRemote:
    """A DVC remote by URL, with the options DVC's S3 remote reads (``endpointurl`` and the like).

    Credentials are kept out of ``repr`` and are written to ``.dvc/config.local`` only.
    """

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)

    def options(self) -> dict[str, str]:
        """The remote's section of ``.dvc/config``: everything but secrets."""
        options = {"url": self.url}
        if self.endpoint_url:
            options["endpointurl"] = self.endpoint_url
        if self.region:
            options["region"] = self.region
        return options

    def secrets(self) -> dict[str, str]:
        """The remote's section of ``.dvc/config.local``."""
        secrets = {}
        if self.access_key_id:
            secrets["access_key_id"] = self.access_key_id
        if self.secret_access_key:
            secrets["secret_access_key"] = self.secret_access_key
        return secrets

    def __repr__(self) -> str:
        extra = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"DvcRemote({self.url!r}{extra})"


@contextmanager
def _quiet() -> Iterator[None]:
    """DVC logs ``info`` lines to stdout through its own handlers; keep them out of our output."""
    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dvc_error(action: str, target: Path | str, exc: Exception) -> StorageError:
    return StorageError(
        f"DVC could not {action} {target}: {exc}; check that the workspace is a DVC repository "
        "(init_workspace) and that its remote is reachable",
        target=str(target),
    )


@contextmanager
def _open(workspace: Path) -> Iterator[Repo]:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if not (workspace / ".dvc").is_dir():
        raise StorageError(
            f"{workspace} is not a DVC workspace; create it with init_workspace(workspace, remote_dir)"
        )
    try:
        repo = Repo(str(workspace))
    except DvcException as exc:
        raise _dvc_error("open", workspace, exc) from exc
    try:
        yield repo
    finally:
        repo.close()


def _remote(remote: Path | str | DvcRemote) -> DvcRemote:
    if isinstance(remote, DvcRemote):
        return remote
    if isinstance(remote, Path):
        remote.mkdir(parents=True, exist_ok=True)
        return DvcRemote(str(remote.resolve()))
    return DvcRemote(remote)


def init_workspace(workspace: Path, remote: Path | str | DvcRemote) -> None:
    """Make ``workspace`` a DVC repository (no git) whose default remote is ``remote``. Idempotent.

    ``remote`` is a local folder, a URL, or a ``DvcRemote`` (URL plus S3 options and credentials).
    This writes what ``dvc init --no-scm`` writes (``.dvc/config``, ``.dvcignore``) through DVC's
    ``Config`` rather than calling ``Repo.init``: ``Repo.init`` opens the repository before the
    config can move its site cache, which would leave a folder in ``/var/tmp/dvc`` per workspace.
    """
    from dvc.config import Config
    from dvc.exceptions import DvcException
    from dvc.ignore import init as init_dvcignore

    workspace.mkdir(parents=True, exist_ok=True)
    spec = _remote(remote)
    dvc_dir = workspace / ".dvc"
    site_cache = str(dvc_dir / "tmp" / "site-cache")
    try:
        if dvc_dir.is_dir():
            config = Config(dvc_dir=str(dvc_dir))
        else:
            dvc_dir.mkdir()
            config = Config.init(str(dvc_dir))
            init_dvcignore(str(workspace))
        core = config.get("core", {})
        # The merged config has validated types and schema defaults; the raw levels say which file
        # holds which key, which is what must match for the URL and for the secrets.
        if (
            config.load_one("repo").get("remote", {}).get(REMOTE_NAME) == spec.options()
            and config.load_one("local").get("remote", {}).get(REMOTE_NAME, {}) == spec.secrets()
            and core.get("remote") == REMOTE_NAME
            and core.get("no_scm") is True
            and core.get("analytics") is False
            and core.get("site_cache_dir") == site_cache
        ):
            return
        # Secrets first and unvalidated: the merged config is only consistent once the URL that the
        # repo level names (S3 or a folder) agrees with them, which the validated edit below checks.
        with config.edit("local", validate=False) as conf:
            if spec.secrets():
                conf["remote"][REMOTE_NAME] = spec.secrets()
            else:
                conf["remote"].pop(REMOTE_NAME, None)
        with config.edit() as conf:
            conf["core"]["no_scm"] = True
            conf["core"]["analytics"] = False
            conf["core"]["site_cache_dir"] = site_cache
            conf["core"]["remote"] = REMOTE_NAME
            conf["remote"][REMOTE_NAME] = spec.options()
    except DvcException as exc:
        raise _dvc_error("initialise", workspace, exc) from exc


def _folder(workspace: Path, folder: Path | str) -> Path:
    path = Path(folder)
    path = (workspace / path) if not path.is_absolute() else path
    path = path.resolve()
    try:
        path.relative_to(workspace.resolve())
    except ValueError as exc:
        raise StorageError(
            f"{path} is outside the DVC workspace {workspace}; version folders live inside it"
        ) from exc
    return path


def dvc_file(workspace: Path, folder: Path | str) -> Path:
    """The ``.dvc`` file DVC writes next to a tracked folder."""
    path = _folder(workspace, folder)
    return path.with_name(path.name + ".dvc")


def _md5_of(dvc_path: Path) -> str:
    import yaml

    try:
        data: Any = yaml.safe_load(dvc_path.read_text(encoding="utf-8"))
        return str(data["outs"][0]["md5"])
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise StorageError(
            f"{dvc_path} does not name an md5 for its output ({exc}); track the folder again"
        ) from exc


def track_and_push(workspace: Path, folder: Path | str) -> str:
    """``dvc add`` the folder, ``dvc push`` it to the default remote; return its md5 (``….dir``)."""
    from dvc.exceptions import DvcException

    path = _folder(workspace, folder)
    if not path.is_dir():
        raise StorageError(f"{path} is not a folder; write the version folder before tracking it")
    with _quiet(), _open(workspace) as repo:
        try:
            repo.add([str(path)])
            repo.push(targets=[str(path)])
        except DvcException as exc:
            raise _dvc_error("add and push", path, exc) from exc
    return _md5_of(dvc_file(workspace, path))


def pull(workspace: Path, folder: Path | str | Sequence[Path | str]) -> None:
    """Restore tracked folders' files from the cache or the remote (after they were deleted locally).

    ``folder`` is one folder or several, pulled in one DVC call; files that differ from what the
    ``.dvc`` file names are overwritten.
    """
    from dvc.exceptions import DvcException

    folders = [folder] if isinstance(folder, Path | str) else list(folder)
    paths = [_folder(workspace, f) for f in folders]
    targets = [dvc_file(workspace, path) for path in paths]
    for path, target in zip(paths, targets, strict=True):
        if not target.is_file():
            raise StorageError(f"{path} is not tracked ({target} is missing); nothing to pull")
    if not targets:
        return
    with _quiet(), _open(workspace) as repo:
        try:
            repo.pull(targets=[str(t) for t in targets], force=True)
        except DvcException as exc:
            where = paths[0] if len(paths) == 1 else f"{len(paths)} folders ({paths[0]}, …)"
            raise _dvc_error("pull", where, exc) from exc


def ensure_tracked(workspace: Path, folder: Path | str, md5: str) -> None:
    """Make sure the folder's ``.dvc`` file names ``md5``; write it if it was lost.

    The registry keeps every version's DVC md5, so a workspace whose ``.dvc`` files are gone (a
    fresh machine, a wiped disk) can still pull any version from the remote.
    """
    import yaml

    path = _folder(workspace, folder)
    target = dvc_file(workspace, path)
    if target.is_file():
        found = _md5_of(target)
        if found != md5:
            raise StorageError(
                f"{target} names md5 {found}, the registry says {md5}; the .dvc file was changed — "
                "delete it and pull again so it is rewritten from the registry",
                target=str(target),
            )
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    out = {"outs": [{"md5": md5, "hash": "md5", "path": path.name}]}
    target.write_text(yaml.safe_dump(out, sort_keys=False), encoding="utf-8")


def untrack(workspace: Path, folder: Path | str) -> None:
    """Forget a folder that was tracked but never registered: remove its ``.dvc`` file and files.

    Objects already pushed stay in the remote: they are content-addressed, so they are harmless
    and are reused if the same bytes are pushed again.
    """
    import shutil

    path = _folder(workspace, folder)
    dvc_file(workspace, path).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)
