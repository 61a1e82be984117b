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
