"""The local object store: keys can never leave the store, writes are atomic."""

from __future__ import annotations

import pytest

from databright.errors import StorageError
from databright.storage import LocalObjectStore


@pytest.fixture
def store(tmp_path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "store")


def test_round_trip_and_listing(store):
    store.put_bytes("receipts/2026-11/job-1.json", b"{}")
    store.put_bytes("models/job-1/abc.pt", b"weights")
    assert store.get_bytes("models/job-1/abc.pt") == b"weights"
    assert store.list("receipts/") == ["receipts/2026-11/job-1.json"]
    assert store.exists("receipts/2026-11/job-1.json")
    assert not store.exists("receipts/2026-11/job-2.json")


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "a//b", "a/./b", "", "a\x00b", "é"])
def test_keys_that_could_leave_the_store_are_refused(store, key):
    with pytest.raises(StorageError, match="not allowed"):
        store.put_bytes(key, b"x")
    assert not any((store.root.parent).rglob("escape"))


def test_overwrite_is_atomic_and_leaves_no_temporary_files(store):
    store.put_bytes("k", b"one")
    store.put_bytes("k", b"two")
    assert store.get_bytes("k") == b"two"
    assert [p.name for p in store.root.iterdir()] == ["k"]


def test_missing_object_names_the_key(store):
    with pytest.raises(StorageError, match="'nope' is not in the store"):
        store.get_bytes("nope")
