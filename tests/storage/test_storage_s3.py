"""S3 end to end, against a real S3-compatible HTTP server on 127.0.0.1 (moto's, started here):
the object store through boto3, and dataset versions through DVC's S3 remote (dvc-s3) — register,
push, wipe the local workspace and cache, pull, verify every digest."""

from __future__ import annotations

import hashlib
import logging
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config

from databright.config import Settings
from databright.crypto import digest_file, merkle_root_hex
from databright.datasets import Registry, register_file
from databright.datasets.lineage import pull_version
from databright.datasets.shares import withdraw_records
from databright.datasets.versions import load_version_frame
from databright.errors import StorageError
from databright.storage import S3ObjectStore

pytestmark = pytest.mark.integration

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "databright-test",
    "AWS_SECRET_ACCESS_KEY": "databright-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread on a free port of 127.0.0.1, for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )


@pytest.fixture
def s3_settings(s3_endpoint: str, tmp_path: Path) -> Settings:
    """Settings from an environment naming a fresh bucket on the test server."""
    bucket = f"exchange-{uuid.uuid4().hex[:12]}"
    _client(s3_endpoint).create_bucket(Bucket=bucket)
    env = {
        "DATABRIGHT_HOME": str(tmp_path / "home"),
        "DATABRIGHT_PERIOD": "2026-11",
        "DATABRIGHT_S3_BUCKET": bucket,
        "DATABRIGHT_S3_ENDPOINT_URL": s3_endpoint,
        "DATABRIGHT_S3_PREFIX": "exchange/test",
        **CREDENTIALS,
    }
    return Settings.from_env(env).ensure_dirs()


def test_object_store_round_trip(s3_settings: Settings, s3_endpoint: str) -> None:
    store = s3_settings.object_store()
    assert isinstance(store, S3ObjectStore)
    url = store.put_bytes("receipts/2026-11/job-1.json", b'{"ok":true}')
    assert url == f"s3://{s3_settings.s3_bucket}/exchange/test/receipts/2026-11/job-1.json"
    store.put_bytes("models/job-1/abc.pt", b"weights")
    store.put_bytes("models/job-1/abc.pt", b"weights v2")  # a put replaces the object whole
    assert store.get_bytes("models/job-1/abc.pt") == b"weights v2"
    assert store.list() == ["models/job-1/abc.pt", "receipts/2026-11/job-1.json"]
    assert store.list("receipts/") == ["receipts/2026-11/job-1.json"]
    assert store.exists("receipts/2026-11/job-1.json") and not store.exists("receipts/2026-11/job-2.json")
    # The bytes are where the URL says, as any S3 client sees them.
    raw = _client(s3_endpoint).get_object(
        Bucket=s3_settings.s3_bucket, Key="exchange/test/receipts/2026-11/job-1.json"
    )
    assert raw["Body"].read() == b'{"ok":true}'

    # Another prefix in the same bucket is another store.
    other = S3ObjectStore(str(s3_settings.s3_bucket), "elsewhere", s3_endpoint, client=store.client)
    assert other.list() == [] and not other.exists("models/job-1/abc.pt")

    with pytest.raises(StorageError, match="object 'nope' is not in the store at s3://"):
        store.get_bytes("nope")
    with pytest.raises(StorageError, match="not allowed"):
        store.put_bytes("../escape", b"x")
    missing = S3ObjectStore("no-such-bucket-here", "", s3_endpoint, client=store.client)
    with pytest.raises(StorageError, match="NoSuchBucket; create the bucket or fix DATABRIGHT_S3_BUCKET"):
        missing.put_bytes("k", b"x")
    with pytest.raises(StorageError, match="S3 bucket name 'Bad_Bucket' is not valid"):
        S3ObjectStore("Bad_Bucket")


def test_an_unreachable_endpoint_is_a_storage_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2),
    )
    store = S3ObjectStore("exchange", "p", f"http://127.0.0.1:{port}", client=client)
    with pytest.raises(StorageError, match="check that DATABRIGHT_S3_ENDPOINT_URL is reachable"):
        store.get_bytes("k")


def _csv(folder: Path, owner: str, n: int, rng: np.random.Generator) -> Path:
    x = rng.normal(0.0, 5.0, size=(n, 8)).round(4)
    lines = [",".join([*(f"f{i}" for i in range(8)), "label"])]
    lines += [
        ",".join([*(f"{v:.4f}" for v in row), str(int(y))])
        for row, y in zip(x, rng.integers(0, 2, n), strict=True)
    ]
    path = folder / f"{owner}.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_versions_round_trip_through_dvc_s3(s3_settings: Settings, s3_endpoint: str, tmp_path: Path) -> None:
    settings = s3_settings
    db = settings.exchange_db()
    rng = np.random.default_rng(4)
    for owner, n in (("alice", 12), ("bob", 6)):
        register_file(
            settings,
            db,
            dataset="credit",
            contract_kind="tabular-v1",
            owner=owner,
            path=_csv(tmp_path, owner, n, rng),
        )
    bob = [rid for rid, o in Registry(db).record_owners("credit", 2).items() if o == "bob"]
    v3 = withdraw_records(settings, db, dataset="credit", owner="bob", record_ids=bob[:2]).version
    workspace = settings.workspace_dir

    # Every file of every version is in the bucket under DVC's content address; nothing went local.
    client = _client(s3_endpoint)
    keys = {
        item["Key"]
        for item in client.list_objects_v2(Bucket=settings.s3_bucket, Prefix="exchange/test/dvc/")["Contents"]
    }
    files = sorted(p for p in (workspace / "datasets" / "credit").glob("v*/*") if p.is_file())
    assert len(files) == 4 + 4 + 3 + 4  # and the sealed shards: v1..v3's deltas, v3's withdrawal file
    before = {}
    for path in files:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        # Deltas and withdrawal files reach the bucket only sealed (trust.sealing); the rest as they are.
        pushed = f"exchange/test/dvc/files/md5/{md5[:2]}/{md5[2:]}" in keys
        assert pushed != (path.name in ("records.parquet", "withdrawn.parquet")), path
        before[path.relative_to(workspace)] = digest_file(path)
    assert not any(settings.store_dir.rglob("*")), "with S3 configured nothing goes to the local store"
    assert "databright-test-secret" not in (workspace / ".dvc" / "config").read_text()

    # Lose everything local but the registry: version folders, .dvc files and DVC's cache.
    shutil.rmtree(workspace / "datasets")
    shutil.rmtree(workspace / ".dvc" / "cache", ignore_errors=True)
    report = pull_version(settings, db, "credit", 3)
    assert report.remote == f"s3://{settings.s3_bucket}/exchange/test/dvc"
    assert (report.version, report.record_count, report.files_verified) == (3, 16, 11)
    assert report.shards_opened == 4  # the sealed shards were unsealed back into place
    assert report.merkle_root == v3.merkle_root
    assert {p.relative_to(workspace): digest_file(p) for p in files} == before
    frame = load_version_frame(workspace, v3)
    assert merkle_root_hex([bytes.fromhex(i) for i in frame["record_id"]]) == v3.merkle_root
    assert frame["owner"].value_counts().to_dict() == {"alice": 12, "bob": 4}
