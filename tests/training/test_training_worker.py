"""WorkerProcess: a real child process holding the session key; attestation, jobs, failures."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from training_fixtures import ENCLAVE_TASKS, JobData, seal_job_data

from databright.crypto import PublicKey, SigningKey, open_envelope, sha256_hex
from databright.errors import ConfigError, IntegrityError, TrainingError
from databright.training import JobOutcome, WorkerProcess
from databright.trust.evidence import SIM_QUOTE_TYPE, binding_report_data
from databright.trust.kex import KEX_KEY_TYPE, KexKeyPair, KeyRelease
from databright.trust.measurement import measure_task
from databright.trust.sealing import HEADER_BYTES
from databright.trust.simulated import SimulatedPlatform, provision_platform

# A task without torch, so these tests stay fast: its behaviour is chosen by the `mode` setting.
FLAKY_MANIFEST = """\
name: flaky
entrypoint: task.py
model: none (test task)
signer_id: databright-dev
product_id: 1
svn: 1
config:
  mode: ok
"""
FLAKY_TASK = """\
import os

import numpy as np

from databright.training.tasks import TrainOutput


def train(x, y, config, seed, x_val=None, y_val=None):
    if config["mode"] == "raise":
        raise RuntimeError("boom from inside the enclave")
    if config["mode"] == "exit":
        os._exit(7)
    return TrainOutput(
        model_state=b"model-" + str(seed).encode(),
        visits=np.ones(len(x), dtype=np.int64),
        contributions=np.zeros(len(x)),
        embed=lambda rows: np.asarray(rows, dtype=float),
        validation_accuracy=None,
        model_cost=2,
    )
"""


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tasks"
    (root / "flaky").mkdir(parents=True)
    (root / "flaky" / "manifest.yaml").write_text(FLAKY_MANIFEST)
    (root / "flaky" / "task.py").write_text(FLAKY_TASK)
    return root


@pytest.fixture
def platform(tmp_path: Path) -> SimulatedPlatform:
    return provision_platform(tmp_path / "keys", "prov-1")


def quote_of(evidence: dict, platform: SimulatedPlatform) -> dict:
    payload = open_envelope(evidence["quote"], SIM_QUOTE_TYPE, platform.public_key)
    return json.loads(payload)


def test_start_attest_run_and_failures(
    platform: SimulatedPlatform,
    tasks_dir: Path,
    job_data: JobData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private_root = tmp_path / "worker-tmp"  # where the child makes its private shard folders
    private_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_root))
    sealed = seal_job_data(job_data, tmp_path / "workspace")
    nothing = KeyRelease("kr-0", "tabular", 2, "flaky", "ar-test", "prov-1", "simulated", "2026-11-03", ())

    worker = WorkerProcess("prov-1", platform.key_path, platform.endorsement, tasks_dir, call_timeout_s=60)
    with worker:
        public_key = PublicKey.from_hex(worker.session_public_key or "")
        assert worker.is_alive()

        # Not attested yet: no job runs, and no key-exchange key is published.
        with pytest.raises(TrainingError, match="has not been attested"):
            worker.run(sealed.spec(job_data, tmp_path / "out", nothing, config={}))
        with pytest.raises(TrainingError, match="has not attested yet"):
            worker.publish_kex("ar-test")

        # Evidence: a quote by the platform key, binding the child's session key to our nonce.
        nonce = b"n" * 32
        evidence = worker.attest("flaky", nonce)
        quote = quote_of(evidence, platform)
        assert quote["measurement"] == measure_task(tasks_dir / "flaky")
        assert quote["report_data"] == binding_report_data(public_key, nonce).hex()
        assert (quote["signer_id"], quote["product_id"], quote["svn"]) == ("databright-dev", 1, 1)
        assert evidence["endorsement"] == platform.endorsement

        # The session's X25519 key, signed by its session key; one key per attestation result.
        kex = worker.publish_kex("ar-test")
        assert json.loads(open_envelope(kex, KEX_KEY_TYPE, public_key))["attestation_result_id"] == "ar-test"
        assert worker.publish_kex("ar-test")["payload"] == kex["payload"]
        release = sealed.release(kex, public_key.hex, task="flaky")

        def flaky(out: str = "out", **changes):
            return sealed.spec(job_data, tmp_path / out, release, **{"config": {}, **changes})

        # A job runs from the shards alone (the workspace holds no plaintext) and its receipt is
        # signed by the same session key.
        spec = flaky()
        assert not any(p.name.endswith(".parquet") for p in (tmp_path / "workspace").rglob("*"))
        outcome = worker.run(spec)
        assert isinstance(outcome, JobOutcome)
        assert outcome.work_units == len(job_data.frame) * 2
        assert (outcome.receipt.sequence, outcome.receipt.previous_receipt_digest) == (0, None)
        assert outcome.receipt.measurement == quote["measurement"]
        assert outcome.receipt.dataset_merkle_root == job_data.merkle_root
        open_envelope(
            outcome.receipt_envelope, "application/vnd.databright.usage-receipt.v1+json", public_key
        )
        assert Path(outcome.model_path).read_bytes() == b"model-11"

        # A DatabrightError inside the child comes back as itself, and the worker lives on.
        with pytest.raises(IntegrityError, match="Merkle root") as info:
            worker.run(flaky(expected_merkle_root="1" * 64))
        assert "Traceback" in info.value.context["worker_traceback"]
        assert info.value.context["expected"] == "1" * 64

        # Any other exception becomes a TrainingError carrying the child's traceback.
        with pytest.raises(TrainingError, match=r"(?s)RuntimeError: boom.*worker traceback.*task\.py"):
            worker.run(flaky(config={"mode": "raise"}))
        assert worker.is_alive()

        # Failed jobs leave no gap in the receipt chain.
        again = worker.run(flaky("out2", job_id="job-2"))
        assert again.receipt.sequence == 1
        signed = base64.b64decode(outcome.receipt_envelope["payload"])
        assert again.receipt.previous_receipt_digest == sha256_hex(signed)

        # Changing the task after attestation is refused until it is attested again.
        (tasks_dir / "flaky" / "task.py").write_text(FLAKY_TASK + "\n# edited\n")
        with pytest.raises(TrainingError, match="changed since it was attested"):
            worker.run(spec)

        # Every job's private folder of decrypted shards went with it.
        assert not list(private_root.glob("databright-shards-*"))

        # A child that dies mid-job surfaces as a TrainingError with its exit code, not a hang.
        worker.attest("flaky", b"m" * 32)
        with pytest.raises(TrainingError, match="exit code 7"):
            worker.run(flaky(config={"mode": "exit"}))
        assert not worker.is_alive()
        with pytest.raises(TrainingError, match="not running"):
            worker.attest("flaky", nonce)
    worker.stop()  # idempotent


def test_the_worker_reads_only_shards_released_to_its_session(
    platform: SimulatedPlatform,
    tasks_dir: Path,
    job_data: JobData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private_root = tmp_path / "worker-tmp"
    private_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_root))
    sealed = seal_job_data(job_data, tmp_path / "workspace")
    with WorkerProcess("prov-1", platform.key_path, platform.endorsement, tasks_dir) as worker:
        session = worker.session_public_key or ""
        worker.attest("flaky", b"n" * 32)
        release = sealed.release(worker.publish_kex("ar-test"), session, task="flaky")

        def run(out: str, spec_release: KeyRelease = release, **changes) -> JobOutcome:
            return worker.run(
                sealed.spec(job_data, tmp_path / out, spec_release, **{"config": {}, **changes})
            )

        # A plain spec naming plaintext files is refused: the worker reads sealed shards only.
        with pytest.raises(TrainingError, match="names plaintext data files"):
            worker.run(job_data.spec(tmp_path / "plain", task="flaky", config={}))

        # Keys wrapped to another session's X25519 key do not open here.
        stranger = SigningKey.generate()
        foreign = sealed.release(KexKeyPair.generate().publish(stranger, "ar-test"), stranger.public_key.hex)
        with pytest.raises(IntegrityError, match="was released to X25519 key"):
            run("foreign", replace(foreign, task="flaky"))

        # A release for another result, or a result this session published no key for, is refused.
        other = sealed.release(worker.publish_kex("ar-test"), session, task="flaky", result_id="ar-other")
        with pytest.raises(IntegrityError, match="key release kr-test is for 'tabular' v2, result ar-other"):
            run("other", other)
        with pytest.raises(TrainingError, match="published no key-exchange key"):
            run("other2", other, attestation_result_id="ar-other")

        # One flipped bit of one shard: detected while decrypting, before any training; no receipt.
        shard = Path(sealed.shards[1].path)
        original = shard.read_bytes()
        tampered = bytearray(original)
        tampered[HEADER_BYTES + 5] ^= 0x01
        shard.write_bytes(bytes(tampered))
        with pytest.raises(
            IntegrityError, match=r"records\.parquet\.sealed: chunk 0 .* fails authentication"
        ):
            run("tampered")
        assert not (tmp_path / "tampered").exists()  # the task never ran: no model, no receipt
        shard.write_bytes(original)

        # A shard sealed from other data than the registry's digest is refused the same way.
        wrong_digest = replace(sealed.shards[0], sha256="0" * 64)
        with pytest.raises(IntegrityError, match="it was sealed from altered data"):
            run("digest", shards=(wrong_digest, sealed.shards[1]))

        # The refusals issued no receipts: the first job that runs is the session's first receipt.
        outcome = run("good")
        assert (outcome.receipt.sequence, outcome.receipt.dataset_version) == (0, 2)
    assert not list(private_root.glob("databright-shards-*"))


def test_a_bad_platform_fails_start_with_its_reason(platform: SimulatedPlatform, tmp_path: Path) -> None:
    other = provision_platform(tmp_path / "other-keys", "prov-2")
    worker = WorkerProcess("prov-1", platform.key_path, other.endorsement, ENCLAVE_TASKS)
    with pytest.raises(ConfigError, match="provision the platform again"):
        worker.start()
    assert not worker.is_alive()


def test_unknown_task_is_refused_in_the_child(platform: SimulatedPlatform, tasks_dir: Path) -> None:
    with WorkerProcess("prov-1", platform.key_path, platform.endorsement, tasks_dir) as worker:
        with pytest.raises(ConfigError, match="no enclave task 'nope'"):
            worker.attest("nope", b"x" * 32)
        assert worker.is_alive()
    assert not worker.is_alive()


def test_start_twice_and_bad_provider(platform: SimulatedPlatform, tasks_dir: Path) -> None:
    with pytest.raises(TrainingError, match="provider_id"):
        WorkerProcess("", platform.key_path, platform.endorsement, tasks_dir)
    worker = WorkerProcess("prov-1", platform.key_path, platform.endorsement, tasks_dir)
    with worker, pytest.raises(TrainingError, match="already started"):
        worker.start()


def test_task_folder_is_left_untouched(platform: SimulatedPlatform, tmp_path: Path) -> None:
    # Measuring and loading inside the child never writes caches into the measured folder.
    root = tmp_path / "tasks"
    shutil.copytree(ENCLAVE_TASKS / "tabular_logreg", root / "tabular_logreg")
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    with WorkerProcess("prov-1", platform.key_path, platform.endorsement, root) as worker:
        worker.attest("tabular_logreg", b"z" * 32)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before
