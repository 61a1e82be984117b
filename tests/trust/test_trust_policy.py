"""The appraisal policy file: the shipped development policy, its production twin, and bad files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from databright.config import Settings
from databright.errors import ConfigError
from databright.trust import AttestationPolicy, production_policy
from databright.trust.measurement import measure_task


def repo_policy_dict(settings: Settings) -> dict:
    return yaml.safe_load(settings.attestation_policy_path.read_text())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_development_policy_allows_simulated_and_exactly_the_current_task_measurement(settings: Settings):
    """The committed policy admits today's enclave tasks and nothing else: edit a task, and this test
    says to run `databright enclave measure TASK` and put the new value in the policy."""
    policy = AttestationPolicy.load(settings.attestation_policy_path)
    assert "simulated" in policy.allowed_tee_types
    tasks = sorted(p.name for p in settings.enclave_tasks_dir.iterdir() if (p / "manifest.yaml").is_file())
    current = {task: (measure_task(settings.enclave_tasks_dir / task),) for task in tasks}
    assert policy.measurements == current, "run `databright enclave measure TASK` and update the policy"
    assert policy.allow_debug is False
    assert policy.nonce_ttl_seconds > 0 and policy.result_lifetime_seconds > 0
    # The file says, in words, that it is the development policy.
    assert "DEVELOPMENT" in settings.attestation_policy_path.read_text()


def test_production_policy_refuses_simulated_and_debug(settings: Settings):
    dev = dataclasses.replace(AttestationPolicy.load(settings.attestation_policy_path), allow_debug=True)
    prod = production_policy(dev)
    assert "simulated" not in prod.allowed_tee_types
    assert set(prod.allowed_tee_types) == {"sgx-dcap", "tdx"}
    assert prod.allow_debug is False
    assert prod.acceptable_tcb_statuses == ("UpToDate",)
    assert prod.measurements == dev.measurements and prod.signer_ids == dev.signer_ids
    assert prod.digest != dev.digest
    assert production_policy(prod) == prod  # idempotent


def test_digest_is_stable_through_a_dump_and_load_and_changes_with_any_rule(settings: Settings, tmp_path):
    policy = AttestationPolicy.load(settings.attestation_policy_path)
    again = AttestationPolicy.load(policy.dump(tmp_path / "copy.yaml"))
    assert again == policy and again.digest == policy.digest
    assert dataclasses.replace(policy, min_svn=policy.min_svn + 1).digest != policy.digest
    assert policy.allowing("tabular_logreg", "ab" * 32).digest != policy.digest


def test_allowing_adds_a_measurement_once(settings: Settings):
    policy = AttestationPolicy.load(settings.attestation_policy_path)
    before = policy.measurements["tabular_logreg"]
    once = policy.allowing("tabular_logreg", "ab" * 32)
    assert once.measurements["tabular_logreg"] == (*before, "ab" * 32)
    assert once.allowing("tabular_logreg", "ab" * 32) == once
    assert policy.measurements["tabular_logreg"] == before  # the original is untouched
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        policy.allowing("tabular_logreg", "AB" * 32)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("allowed_tee_types", ["simulated", "sgx"], "allowed_tee_types"),
        ("allowed_tee_types", "simulated", "allowed_tee_types"),
        ("measurements", {"tabular_logreg": ["xyz"]}, "measurements.tabular_logreg"),
        ("measurements", ["a"], "measurements"),
        ("product_ids", ["one"], "product_ids"),
        ("min_svn", -1, "min_svn"),
        ("min_svn", True, "min_svn"),
        ("allow_debug", "no", "allow_debug"),
        ("version", 0, "version"),
        ("name", "", "name"),
        ("nonce_ttl_seconds", 0, "nonce_ttl_seconds"),
        ("result_lifetime_seconds", 1.5, "result_lifetime_seconds"),
        ("signer_ids", [3], "signer_ids"),
    ],
)
def test_bad_field_is_refused_naming_the_field(settings: Settings, tmp_path, field, value, message):
    data = repo_policy_dict(settings)
    data[field] = value
    with pytest.raises(ConfigError, match=f"field {message} is"):
        AttestationPolicy.load(write(tmp_path, data))


def test_missing_and_unknown_fields_are_named(settings: Settings, tmp_path):
    data = repo_policy_dict(settings)
    del data["min_svn"]
    with pytest.raises(ConfigError, match="missing field\\(s\\) min_svn"):
        AttestationPolicy.load(write(tmp_path, data))
    data = repo_policy_dict(settings)
    data["allow_debugg"] = True
    with pytest.raises(ConfigError, match="unknown field\\(s\\) allow_debugg"):
        AttestationPolicy.load(write(tmp_path, data))


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        AttestationPolicy.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [oops\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AttestationPolicy.load(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        AttestationPolicy.load(bad)


def test_null_lists_mean_empty(settings: Settings, tmp_path):
    data = repo_policy_dict(settings)
    data["measurements"] = {"tabular_logreg": None}
    data["acceptable_tcb_statuses"] = None
    policy = AttestationPolicy.load(write(tmp_path, data))
    assert policy.measurements == {"tabular_logreg": ()}
    assert policy.acceptable_tcb_statuses == ()


# --- hardware rules: TCB statuses, advisory deny-list, identities per hardware tee type ---------

SGX_IDENTITY = {
    "measurements": {"tabular_logreg": ["ab" * 32]},
    "signer_ids": ["cd" * 32],
    "product_ids": [0],
    "min_svn": 2,
}
TDX_IDENTITY = {"measurements": {}, "signer_ids": ["ef" * 48], "product_ids": [0], "min_svn": 0}


def test_the_development_policy_names_both_hardware_tee_types_and_admits_no_enclave_yet(settings: Settings):
    policy = AttestationPolicy.load(settings.attestation_policy_path)
    assert set(policy.hardware_identities) == {"sgx-dcap", "tdx"}
    assert all(not identity.measurements for identity in policy.hardware_identities.values())
    assert policy.denied_advisories == ()
    assert policy.identity_for("simulated") is None


def test_hardware_rules_round_trip_and_change_the_digest(settings: Settings, tmp_path):
    data = repo_policy_dict(settings)
    data["denied_advisories"] = ["INTEL-SA-00615"]
    data["hardware_identities"] = {"sgx-dcap": SGX_IDENTITY, "tdx": TDX_IDENTITY}
    policy = AttestationPolicy.load(write(tmp_path, data))
    identity = policy.identity_for("sgx-dcap")
    assert identity is not None
    assert identity.measurements == {"tabular_logreg": ("ab" * 32,)}
    assert (identity.signer_ids, identity.product_ids, identity.min_svn) == (("cd" * 32,), (0,), 2)
    assert policy.denied_advisories == ("INTEL-SA-00615",)
    again = AttestationPolicy.load(policy.dump(tmp_path / "again.yaml"))
    assert again == policy and again.digest == policy.digest
    assert dataclasses.replace(policy, denied_advisories=()).digest != policy.digest
    assert dataclasses.replace(policy, hardware_identities={}).digest != policy.digest
    prod = production_policy(policy)
    assert prod.hardware_identities == policy.hardware_identities
    assert prod.denied_advisories == policy.denied_advisories


def test_a_policy_file_without_the_hardware_fields_still_loads(settings: Settings, tmp_path):
    data = repo_policy_dict(settings)
    del data["denied_advisories"], data["hardware_identities"]
    policy = AttestationPolicy.load(write(tmp_path, data))
    assert (policy.denied_advisories, policy.hardware_identities) == ((), {})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("acceptable_tcb_statuses", ["Revoked"], "acceptable_tcb_statuses"),
        ("acceptable_tcb_statuses", ["UpTodate"], "acceptable_tcb_statuses"),
        ("denied_advisories", ["INTEL-SA-615"], "denied_advisories"),
        ("denied_advisories", "INTEL-SA-00615", "denied_advisories"),
        ("hardware_identities", ["sgx-dcap"], "hardware_identities"),
        ("hardware_identities", {"sgx": SGX_IDENTITY}, "hardware_identities"),
        ("hardware_identities", {"simulated": SGX_IDENTITY}, "hardware_identities"),
        ("hardware_identities", {"sgx-dcap": "all"}, "hardware_identities.sgx-dcap"),
        ("hardware_identities", {"sgx-dcap": {"measurements": {}}}, "hardware_identities.sgx-dcap"),
        (
            "hardware_identities",
            {"sgx-dcap": {**SGX_IDENTITY, "measurements": {"t": ["AB" * 32]}}},
            "hardware_identities.sgx-dcap.measurements.t",
        ),
        (
            "hardware_identities",
            {"sgx-dcap": {**SGX_IDENTITY, "measurements": ["ab" * 32]}},
            "hardware_identities.sgx-dcap.measurements",
        ),
        # An MRSIGNER is 32 bytes, an MROWNER 48: each tee type's signer has its own length.
        (
            "hardware_identities",
            {"sgx-dcap": {**SGX_IDENTITY, "signer_ids": ["ef" * 48]}},
            "hardware_identities.sgx-dcap.signer_ids",
        ),
        (
            "hardware_identities",
            {"tdx": {**TDX_IDENTITY, "signer_ids": ["cd" * 32]}},
            "hardware_identities.tdx.signer_ids",
        ),
        (
            "hardware_identities",
            {"sgx-dcap": {**SGX_IDENTITY, "product_ids": [70000]}},
            "hardware_identities.sgx-dcap.product_ids",
        ),
        (
            "hardware_identities",
            {"sgx-dcap": {**SGX_IDENTITY, "min_svn": -1}},
            "hardware_identities.sgx-dcap.min_svn",
        ),
        (
            "hardware_identities",
            {"tdx": {**TDX_IDENTITY, "min_svn": True}},
            "hardware_identities.tdx.min_svn",
        ),
    ],
)
def test_bad_hardware_rule_is_refused_naming_the_field(settings: Settings, tmp_path, field, value, message):
    data = repo_policy_dict(settings)
    data[field] = value
    with pytest.raises(ConfigError, match=f"field {message} is"):
        AttestationPolicy.load(write(tmp_path, data))
