"""Fixtures for the trust tests: a provisioned simulated platform, a policy, a verifier, a session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from trust_testkit import MEASUREMENT, NOW, PRODUCT, SIGNER, SVN, TASK

from databright.config import Settings
from databright.crypto import SigningKey
from databright.db import ExchangeDB
from databright.storage.objectstore import LocalObjectStore
from databright.trust import (
    AttestationPolicy,
    SimulatedAttester,
    SimulatedPlatform,
    SimulatedVendorRoot,
    SimulatedVerifier,
    binding_report_data,
    load_verifier_key,
    provision_platform,
)


@pytest.fixture
def root(settings: Settings) -> SimulatedVendorRoot:
    return SimulatedVendorRoot.load_or_create(settings.keys_dir)


@pytest.fixture
def platform(settings: Settings, root: SimulatedVendorRoot) -> SimulatedPlatform:
    return provision_platform(settings.keys_dir, "plat-1", tcb_svn=3, lifetime_days=30, now=NOW)


@pytest.fixture
def attester(platform: SimulatedPlatform) -> SimulatedAttester:
    return SimulatedAttester(platform)


@pytest.fixture
def policy(settings: Settings) -> AttestationPolicy:
    """The repository's development policy, plus the toy task's measurement."""
    return AttestationPolicy.load(settings.attestation_policy_path).allowing(TASK, MEASUREMENT)


@pytest.fixture
def store(settings: Settings) -> LocalObjectStore:
    return LocalObjectStore(settings.store_dir)


@pytest.fixture
def verifier_key(settings: Settings) -> SigningKey:
    return load_verifier_key(settings.keys_dir)


@pytest.fixture
def verifier(
    root: SimulatedVendorRoot,
    policy: AttestationPolicy,
    memory_db: ExchangeDB,
    store: LocalObjectStore,
    verifier_key: SigningKey,
) -> SimulatedVerifier:
    return SimulatedVerifier(root.public_key, policy, memory_db, store, verifier_key)


@pytest.fixture
def session_key() -> SigningKey:
    return SigningKey.from_seed(b"enclave session key for tests")


@pytest.fixture
def make_evidence(attester: SimulatedAttester, session_key: SigningKey) -> Callable[..., dict[str, Any]]:
    """Evidence as an honest enclave makes it; keyword overrides model a dishonest or stale one."""

    def make(nonce: bytes, **overrides: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "measurement": MEASUREMENT,
            "signer_id": SIGNER,
            "product_id": PRODUCT,
            "svn": SVN,
            "report_data": binding_report_data(session_key.public_key, nonce),
            "debug": False,
        }
        args.update(overrides)
        return attester.evidence(**args)

    return make
