"""``databright attest check`` on the real Intel samples in tests/trust/fixtures/attestation."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from databright.cli import app
from databright.trust import AttestationPolicy

FIXTURES = Path(__file__).parent / "trust" / "fixtures" / "attestation"
SGX_AT = 1750334171  # the sample's pinned time (fixtures README)


@pytest.fixture
def runner(settings, monkeypatch) -> CliRunner:
    monkeypatch.setenv("DATABRIGHT_HOME", str(settings.home))
    monkeypatch.setenv("DATABRIGHT_PERIOD", settings.period)
    return CliRunner()


def _check(runner: CliRunner, *extra: str) -> tuple[int, str]:
    args = ["attest", "check", str(FIXTURES / "sgx_quote"), str(FIXTURES / "sgx_quote_collateral.json")]
    result = runner.invoke(app, [*args, "--task", "tabular_logreg", *extra])
    return result.exit_code, result.output


def _sample_identity() -> tuple[str, str]:
    import dcap_qvl

    report = dcap_qvl.parse_quote((FIXTURES / "sgx_quote").read_bytes()).report
    enclave = report.as_sgx() if hasattr(report, "as_sgx") else report
    return bytes(enclave.mr_enclave).hex(), bytes(enclave.mr_signer).hex()


def test_the_dev_policy_admits_no_hardware_enclave_yet(runner):
    code, output = _check(runner, "--at", str(SGX_AT))
    assert code == 1 and "MEASUREMENT_NOT_ALLOWED" in output and "Traceback" not in output


def test_the_sample_verifies_at_its_pinned_time_under_a_policy_naming_it(runner, settings, tmp_path):
    mrenclave, mrsigner = _sample_identity()
    data = AttestationPolicy.load(settings.attestation_policy_path).to_dict()
    data["acceptable_tcb_statuses"] = ["UpToDate", "ConfigurationAndSWHardeningNeeded"]
    data["hardware_identities"]["sgx-dcap"] = {
        "measurements": {"tabular_logreg": [mrenclave]},
        "signer_ids": [mrsigner],
        "product_ids": [0],
        "min_svn": 0,
    }
    policy = AttestationPolicy.from_dict(data).dump(tmp_path / "policy.yaml")
    code, output = _check(runner, "--at", str(SGX_AT), "--policy", str(policy))
    assert code == 0, output
    assert "sgx-dcap quote accepted" in output and "assurance: hardware" in output
    assert "ConfigurationAndSWHardeningNeeded" in output and "INTEL-SA-00615" in output
    assert f"measurement: {mrenclave}" in output
    code, output = _check(runner, "--policy", str(policy))  # today: the collateral's CRLs have expired
    assert code == 1 and "CRL_EXPIRED" in output
