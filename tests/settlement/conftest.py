"""Fixtures for settlement: the repository's allocation policy, a session key, a real object store."""

from __future__ import annotations

import pytest

from databright.config import Settings
from databright.crypto import SigningKey
from databright.settlement import AllocationPolicy
from databright.storage.objectstore import LocalObjectStore


@pytest.fixture
def policy(settings: Settings) -> AllocationPolicy:
    return AllocationPolicy.load(settings.allocation_policy_path)


@pytest.fixture
def session_key() -> SigningKey:
    return SigningKey.from_seed(b"settlement-test-session")


@pytest.fixture
def store(settings: Settings) -> LocalObjectStore:
    return LocalObjectStore(settings.store_dir)
