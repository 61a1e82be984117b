"""Key release end to end: ingest seals, an attested worker process trains from the sealed shards
alone, tampered shard bytes abort the job, and a worker without a valid attestation gets no key.

One exchange home and one pool (a real worker process) serve every test; each test submits its
own job and puts back whatever it changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from databright.config import Settings
from databright.crypto import canonical_json, sign_envelope
from databright.datasets import DatasetVersion, Registry, register_file
from databright.datasets.synthetic import make_period
from databright.db import ExchangeDB
from databright.errors import AttestationError, IntegrityError
from databright.ledger import balance, deposit
from databright.market import Provider, choose_offer, list_providers, register_provider
from databright.market.pool import LocalPool
from databright.training.jobs import TrainingJob, get_job, submit_job
from databright.training.service import execute_job, quote_job
from databright.trust import ATTESTATION_RESULT_TYPE, load_verifier_key, registry
from databright.trust.keys import DataKeys, KeyService, ReleaseLogEntry
from databright.trust.sealing import HEADER_BYTES, SEALED_SUFFIX

pytestmark = pytest.mark.integration  # starts an attested worker process

PERIOD = "2026-11"
TASK = "tabular_logreg"
PAYMENT = 1_000_000
TRAINER = "trainer:acme"


@dataclass
class Exchange:
    settings: Settings
    db: ExchangeDB
    pool: LocalPool
    version: DatasetVersion
    validation: Path

    def submit(self, job_id: str) -> TrainingJob:
        quote = quote_job(self.settings, self.version, task=TASK, payment=PAYMENT)
        offer = choose_offer(self.pool.offers, quote)
        return submit_job(
            self.db, job_id=job_id, period=PERIOD, trainer_id="acme", dataset="demo",
            dataset_version=self.version.version, task=TASK, payment=PAYMENT,
            provider_id=offer.provider_id, offer_id=offer.offer_id,
        )  # fmt: skip

    def execute(self, job: TrainingJob, **kwargs) -> TrainingJob:
        (offer,) = self.pool.offers
        return execute_job(
            self.settings, self.db, self.pool, offer, job, self.version,
            validation=self.validation, seed=11, **kwargs,
        )  # fmt: skip

    def receipt_stored(self, job_id: str) -> bool:
        return self.settings.object_store().exists(f"receipts/{PERIOD}/{job_id}.dsse.json")

    def decisions(self) -> dict[str, ReleaseLogEntry]:
        log = KeyService.from_settings(self.settings, self.db).release_log("demo")
        return {entry.release_id: entry for entry in log}

    def new_decision(self, before: dict[str, ReleaseLogEntry]) -> ReleaseLogEntry:
        """The one key-release decision made since ``before`` (the log sorts by the judged moment)."""
        (new,) = [entry for rid, entry in self.decisions().items() if rid not in before]
        return new


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("key-release")
    settings = Settings(home=root / "home", period=PERIOD).ensure_dirs()
    db = settings.exchange_db()
    synthetic = make_period(
        root / "inputs", seed=5, clean_rows=30, noisy_rows=20, copied_rows=5, own_rows=10, validation_rows=30
    )
    for owner, path in synthetic.contributions.items():
        register_file(settings, db, dataset="demo", contract_kind="tabular-v1", owner=owner, path=path)
    register_provider(db, Provider("north", price_per_unit=3, capacity=50_000_000))
    deposit(db, "acme", 20 * PAYMENT, reference="wire-1")
    version = Registry(db).get_version("demo")
    with LocalPool(settings, db, list_providers(db), task=TASK) as pool:
        yield Exchange(settings, db, pool, version, synthetic.validation)


def _md5_in_remote(settings: Settings, path: Path) -> bool:
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return (settings.dvc_remote_dir / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def test_an_attested_worker_trains_from_the_sealed_shards_alone(exchange: Exchange) -> None:
    settings, version = exchange.settings, exchange.version
    plaintext = [settings.workspace_dir / rel for rel in version.data_paths]
    assert len(plaintext) == 3
    for path in plaintext:  # ingest sealed every delta; DVC pushed the shard, never the plaintext
        assert _md5_in_remote(settings, path.with_name(path.name + SEALED_SUFFIX))
        assert not _md5_in_remote(settings, path)

    # Take the exchange's plaintext away while the job runs: the worker must not need it.
    hidden = [path.rename(path.with_name(path.name + ".hidden")) for path in plaintext]
    job, log = exchange.submit("job-sealed"), exchange.decisions()
    try:
        exchange.execute(job)
    finally:
        for path, moved in zip(plaintext, hidden, strict=True):
            moved.rename(path)
    decision = exchange.new_decision(log)
    done = get_job(exchange.db, "job-sealed")
    assert done.status == "completed" and exchange.receipt_stored("job-sealed")

    member = next(iter(exchange.pool.members.values()))
    assert (decision.outcome, decision.reason, decision.version) == ("released", None, version.version)
    assert (decision.result_id, decision.provider_id, decision.assurance) == (
        member.attestation.result_id, "north", "simulated",
    )  # fmt: skip
    keys = DataKeys.from_settings(settings, exchange.db)
    assert decision.key_ids == tuple(keys.get("demo", v).key_id for v in (1, 2, 3))
    assert decision.session_public_key == member.attestation.session_public_key


def test_tampered_shard_bytes_abort_the_job_before_training(exchange: Exchange) -> None:
    shard = exchange.settings.workspace_dir / (exchange.version.data_paths[1] + SEALED_SUFFIX)
    original = shard.read_bytes()
    tampered = bytearray(original)
    tampered[HEADER_BYTES + 7] ^= 0x10
    before = balance(exchange.db, TRAINER)
    job, log = exchange.submit("job-tampered"), exchange.decisions()
    assert balance(exchange.db, TRAINER) == before - PAYMENT  # escrowed
    shard.chmod(0o644)
    shard.write_bytes(bytes(tampered))
    try:
        with pytest.raises(
            IntegrityError, match=r"v2/records\.parquet\.sealed: chunk 0 .* fails authentication"
        ):
            exchange.execute(job)
    finally:
        shard.write_bytes(original)
    failed = get_job(exchange.db, "job-tampered")
    assert failed.status == "failed" and "IntegrityError" in (failed.error or "")
    assert balance(exchange.db, TRAINER) == before  # refunded
    assert not exchange.receipt_stored("job-tampered") and failed.receipt_key is None
    # The keys were released to the attested session; the shard, not the session, was refused.
    assert exchange.new_decision(log).outcome == "released"


def _revoked(exchange: Exchange, result):
    """A verifier-signed copy of ``result`` whose status is ``revoked``, stored like any result."""
    revoked = dataclasses.replace(result, result_id=f"{result.result_id}-revoked", status="revoked")
    key = load_verifier_key(exchange.settings.keys_dir)
    envelope = sign_envelope(key, ATTESTATION_RESULT_TYPE, canonical_json(revoked.to_dict()))
    with exchange.db.transaction() as con:
        registry.insert_result_row(
            con, result_id=revoked.result_id, tee_type=revoked.tee_type, assurance=revoked.assurance,
            measurement=revoked.measurement, session_public_key=revoked.session_public_key,
            provider_id=revoked.provider_id, status="revoked",
            issued_at=dt.datetime.fromisoformat(revoked.issued_at),
            expires_at=dt.datetime.fromisoformat(revoked.expires_at),
            evidence_key=f"attestation/evidence/{revoked.evidence_digest}.json", envelope=envelope,
        )  # fmt: skip
    return revoked


@pytest.mark.parametrize("case", ["expired", "not-ok", "unknown"])
def test_a_worker_without_a_valid_attestation_gets_no_key(exchange: Exchange, case: str) -> None:
    pool = exchange.pool
    provider_id, member = next(iter(pool.members.items()))
    result = member.attestation
    kwargs = {}
    if case == "expired":
        kwargs["now"] = dt.datetime.fromisoformat(result.expires_at) + dt.timedelta(seconds=1)
        code = "RESULT_EXPIRED"
    elif case == "not-ok":
        pool.members[provider_id] = dataclasses.replace(member, attestation=_revoked(exchange, result))
        code = "RESULT_NOT_OK"
    else:
        forged = dataclasses.replace(result, result_id="ar-never-issued")
        pool.members[provider_id] = dataclasses.replace(member, attestation=forged)
        code = "RESULT_UNKNOWN"
    job_id = f"job-refused-{case}"
    before = balance(exchange.db, TRAINER)
    try:
        job, log = exchange.submit(job_id), exchange.decisions()
        with pytest.raises(AttestationError) as info:
            exchange.execute(job, **kwargs)
    finally:
        pool.members[provider_id] = member
    assert info.value.code == code
    refused = get_job(exchange.db, job_id)
    assert refused.status == "failed" and code in (refused.error or "")
    assert balance(exchange.db, TRAINER) == before  # refunded
    assert not exchange.receipt_stored(job_id)
    decision = exchange.new_decision(log)
    assert (decision.outcome, decision.reason, decision.key_ids) == ("refused", code, ())
    assert decision.recipient_public_key is None
