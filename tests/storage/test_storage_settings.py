"""Settings choose the storage backends: the local directory by default, S3 when a bucket is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from databright.config import Settings
from databright.errors import ConfigError
from databright.storage import LocalObjectStore, S3ObjectStore
from databright.storage.dvc_versions import DvcRemote

S3_ENV = {
    "DATABRIGHT_HOME": "/tmp/databright-settings-test",
    "DATABRIGHT_PERIOD": "2026-11",
    "DATABRIGHT_S3_BUCKET": "exchange-data",
    "DATABRIGHT_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    "DATABRIGHT_S3_PREFIX": "/prod/eu/",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "very-secret-key",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


def test_without_a_bucket_everything_stays_local(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATABRIGHT_HOME": str(tmp_path), "DATABRIGHT_PERIOD": "2026-11"})
    assert settings.s3_bucket is None and settings.s3_prefix == "databright"
    assert isinstance(settings.object_store(), LocalObjectStore)
    assert settings.dvc_remote == settings.dvc_remote_dir == tmp_path / "store" / "dvc"


def test_a_bucket_selects_s3_for_objects_and_dvc() -> None:
    settings = Settings.from_env(S3_ENV)
    assert (settings.s3_bucket, settings.s3_endpoint_url, settings.s3_prefix, settings.aws_region) == (
        "exchange-data",
        "http://127.0.0.1:9000",
        "prod/eu",
        "eu-west-1",
    )
    store = settings.object_store()
    assert isinstance(store, S3ObjectStore)
    assert (
        store.url("receipts/2026-11/job-1.json") == "s3://exchange-data/prod/eu/receipts/2026-11/job-1.json"
    )
    remote = settings.dvc_remote
    assert isinstance(remote, DvcRemote)
    assert remote.url == "s3://exchange-data/prod/eu/dvc"
    assert remote.options() == {
        "url": "s3://exchange-data/prod/eu/dvc",
        "endpointurl": "http://127.0.0.1:9000",
        "region": "eu-west-1",
    }
    assert remote.secrets() == {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "very-secret-key"}
    # Secrets never show in a repr, so they cannot leak into logs or Prefect artifacts.
    for text in (repr(settings), repr(remote), repr(store)):
        assert "very-secret-key" not in text
    assert settings.with_period("2026-12").s3_bucket == "exchange-data"


def test_an_empty_prefix_puts_dvc_at_the_bucket_root() -> None:
    settings = Settings.from_env({**S3_ENV, "DATABRIGHT_S3_PREFIX": ""})
    remote = settings.dvc_remote
    assert isinstance(remote, DvcRemote) and remote.url == "s3://exchange-data/dvc"
    store = settings.object_store()
    assert isinstance(store, S3ObjectStore) and store.url("k") == "s3://exchange-data/k"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DATABRIGHT_S3_ENDPOINT_URL": "127.0.0.1:9000"}, r"is not an http\(s\) URL"),
        ({"DATABRIGHT_S3_PREFIX": "a/../b"}, "DATABRIGHT_S3_PREFIX='a/../b' is not allowed"),
        ({"DATABRIGHT_S3_PREFIX": "a b"}, "DATABRIGHT_S3_PREFIX='a b' is not allowed"),
    ],
)
def test_unusable_s3_settings_are_refused_with_the_fix(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**S3_ENV, **changes})
