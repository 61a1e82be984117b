"""End to end with the real simulated backend: attest → appraise → train → verify the receipts."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from training_fixtures import ENCLAVE_TASKS, JobData, seal_job_data

from databright.config import Settings
from databright.crypto import PublicKey, digest_file
from databright.db import ExchangeDB
from databright.errors import ReceiptRejected
from databright.storage.objectstore import LocalObjectStore
from databright.training import WorkerProcess
from databright.trust import (
    AttestationPolicy,
    SimulatedVendorRoot,
    SimulatedVerifier,
    load_verifier_key,
    provision_platform,
    receipt_digest,
    verify_receipt,
)
from databright.trust.measurement import measure_task


@pytest.mark.integration
def test_attested_worker_round_trip(
    settings: Settings, memory_db: ExchangeDB, job_data: JobData, tmp_path: Path
) -> None:
    import torch

    keys = settings.keys_dir
    platform = provision_platform(keys, "prov-1")
    measurement = measure_task(ENCLAVE_TASKS / "tabular_logreg")
    policy = AttestationPolicy.load(settings.attestation_policy_path).allowing("tabular_logreg", measurement)
    verifier = SimulatedVerifier(
        SimulatedVendorRoot.load_or_create(keys).public_key,
        policy,
        memory_db,
        LocalObjectStore(settings.store_dir),
        load_verifier_key(keys),
    )

    with WorkerProcess("prov-1", platform.key_path, platform.endorsement, ENCLAVE_TASKS) as worker:
        session_key = PublicKey.from_hex(worker.session_public_key or "")
        nonce = verifier.issue_nonce()
        evidence = worker.attest("tabular_logreg", nonce)
        result, _ = verifier.appraise(
            evidence, session_public_key=session_key, nonce=nonce, task="tabular_logreg", provider_id="prov-1"
        )
        assert result.measurement == measurement and result.assurance == "simulated"

        # The data reaches the session only sealed, its keys wrapped to the session's X25519 key.
        sealed = seal_job_data(job_data, tmp_path / "workspace")
        release = sealed.release(
            worker.publish_kex(result.result_id), session_key.hex, result_id=result.result_id
        )

        def spec(out: str, **changes):
            return sealed.spec(
                job_data, tmp_path / out, release, attestation_result_id=result.result_id,
                assurance=result.assurance, **changes,
            )  # fmt: skip

        first = worker.run(spec("job-1"))
        second = worker.run(spec("job-2", job_id="job-2"))

    # Settlement's check: signed by the attested session, consistent with the result.
    receipt = verify_receipt(first.receipt_envelope, result)
    assert receipt == first.receipt
    assert (receipt.sequence, receipt.previous_receipt_digest) == (0, None)
    later = verify_receipt(second.receipt_envelope, result)
    assert later.sequence == 1
    assert later.previous_receipt_digest == receipt_digest(first.receipt_envelope)

    # Same data, config and seed in another job: the same model, byte for byte, and a real one.
    assert first.model_digest == second.model_digest == digest_file(Path(first.model_path))
    state = torch.load(io.BytesIO(Path(first.model_path).read_bytes()), weights_only=True)
    assert tuple(state["weight"].shape) == (1, 8)
    assert first.work_units == len(job_data.frame) * 5 * 9
    assert first.validation_accuracy is not None and first.validation_accuracy > 0.7

    # A receipt altered after signing is refused.
    forged = dict(first.receipt_envelope)
    forged["payload"] = second.receipt_envelope["payload"]
    with pytest.raises(ReceiptRejected):
        verify_receipt(forged, result)
