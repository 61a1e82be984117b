"""Object store: where dataset files, receipts, evidence, models and statements are kept.

Keys are ``/``-separated names chosen by DataBright (digests, ids), never user-supplied file names,
so a key can never climb out of the store. Two backends implement ``ObjectStore``:

* ``LocalObjectStore`` — the embedded default, a directory (its ``dvc/`` folder is the DVC remote);
* ``S3ObjectStore`` — a bucket and key prefix on any S3-compatible endpoint, through boto3 (its
  ``<prefix>/dvc`` is the DVC remote). botocore's errors become ``StorageError`` in one place,
  ``_s3_errors``; boto3 is imported when the first S3 store is built, not with this module.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from databright.errors import StorageError

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise StorageError(
            f"object key {key!r} is not allowed: use letters, digits, '.', '_', '-' and '/' "
            "separated parts, with no '.' or '..' parts"
        )
    return key


class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def url(self, key: str) -> str: ...


class LocalObjectStore:
    """A directory of files. Writes are atomic (temporary file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"object {key!r} is not in the store at {self.root}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root
        if not base.exists():
            return []
        keys = (p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.split("/")[-1].startswith(".tmp-"))

    def url(self, key: str) -> str:
        return self._path(key).as_uri()


# --- S3 -----------------------------------------------------------------------------------------

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def _error_code(exc: Exception) -> str:
    response: Any = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@contextmanager
def _s3_errors(action: str, where: str) -> Iterator[None]:
    """The botocore boundary: every client or transport error becomes a ``StorageError``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = _error_code(exc)
        hint = {
            "NoSuchBucket": "create the bucket or fix DATABRIGHT_S3_BUCKET",
            "AccessDenied": "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy",
            "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
            "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
        }.get(code, "check the bucket, the credentials and DATABRIGHT_S3_ENDPOINT_URL")
        raise StorageError(f"S3 could not {action} {where}: {code or exc}; {hint}", code=code) from exc
    except BotoCoreError as exc:
        raise StorageError(
            f"S3 could not {action} {where}: {exc}; check that DATABRIGHT_S3_ENDPOINT_URL is reachable "
            "and that credentials are set (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        ) from exc


class S3ObjectStore:
    """Objects under ``s3://<bucket>/<prefix>/`` on AWS or any S3-compatible endpoint.

    A ``put`` is one ``PutObject``, which S3 applies atomically: readers see the old object or the
    new one, never a part. Credentials left as None come from boto3's usual chain.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        client: Any | None = None,
    ) -> None:
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket or ""):
            raise StorageError(
                f"S3 bucket name {bucket!r} is not valid: use 3-63 lowercase letters, digits, '.' and '-' "
                "(set DATABRIGHT_S3_BUCKET)"
            )
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        if client is None:
            import boto3

            with _s3_errors("connect to", endpoint_url or "AWS"):
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint_url,
                    region_name=region,
                    aws_access_key_id=access_key_id,
                    aws_secret_access_key=secret_access_key,
                )
        self.client = client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> str:
        full = self._key(key)
        with _s3_errors("write", self._where(full)):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        try:
            with _s3_errors("read", self._where(full)):
                response = self.client.get_object(Bucket=self.bucket, Key=full)
                body: bytes = response["Body"].read()
        except StorageError as exc:
            if exc.context.get("code") in _NOT_FOUND:
                where = self._where(self.prefix)
                raise StorageError(f"object {key!r} is not in the store at {where}") from exc
            raise
        return body

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with _s3_errors("look up", self._where(full)):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except StorageError as exc:
            if exc.context.get("code") in _NOT_FOUND:
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        with _s3_errors("list", self._where(base + prefix)):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                keys.extend(item["Key"][len(base) :] for item in page.get("Contents", []))
        return sorted(keys)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _where(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    def __repr__(self) -> str:
        at = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3ObjectStore(s3://{self.bucket}/{self.prefix}{at})"
