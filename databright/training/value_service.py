"""The value step on the exchange side: send a completed job to an attested value task and keep
the signed valuation that settlement pays on.

``value_job`` builds a ``ValueSpec`` for a completed training job — the version's sealed shards
with data keys released to the value worker's session, the trainer's validation file and the
trained model as archived with the job, the version manifest's near-duplicate groups — runs it on
the worker behind an offer of a pool attested for the value task, verifies the signed
``ValuationReceipt`` that comes back (signature, attestation result, and ``check_binding``: it
values exactly this job's usage receipt, dataset version and model), then stores it
(``valuation_store.store_valuation``). A job already valued returns its stored valuation.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from databright.config import Settings
from databright.crypto import digest_json, sha256_hex
from databright.datasets import DatasetVersion, Registry, load_contract
from databright.datasets.versions import read_manifest
from databright.db import ExchangeDB
from databright.errors import IntegrityError, TrainingError
from databright.market.offers import Offer
from databright.market.pool import LocalPool
from databright.provenance.record import record_valuation
from databright.storage.objectstore import ObjectStore
from databright.training.jobs import TrainingJob
from databright.training.spec import JobSpec
from databright.training.valuation_store import SignedValuation, get_valuation, store_valuation
from databright.training.value_job import ValueSpec
from databright.trust.keys import KeyService
from databright.trust.receipts import parse_receipt
from databright.trust.sealing import version_shards
from databright.trust.valuation_receipts import ValuationReceipt, check_binding

VALUE_TASK = "knn_shapley"


def _near_duplicate_groups(settings: Settings, version: DatasetVersion) -> tuple[tuple[str, ...], ...]:
    manifest = read_manifest(settings.workspace_dir, version)
    return tuple(tuple(str(r) for r in group) for group in manifest.get("near_duplicate_groups", []))


def _fetch(store: ObjectStore, key: str | None, digest: str, path: Path, what: str, job_id: str) -> Path:
    if not key:
        raise TrainingError(
            f"job {job_id} has no stored {what}; only a job completed by this exchange is valued"
        )
    data = store.get_bytes(key)
    if sha256_hex(data) != digest:
        raise IntegrityError(
            f"the stored {what} of job {job_id} at {key} hashes to {sha256_hex(data)[:16]}…, its usage "
            f"receipt signed {digest[:16]}…; the object store was altered — restore it from backup",
            job_id=job_id,
        )
    path.write_bytes(data)
    return path


def value_job(
    settings: Settings,
    db: ExchangeDB,
    pool: LocalPool,
    offer: Offer,
    job: TrainingJob,
    *,
    verify: Any,
    overrides: dict[str, object] | None = None,
    now: dt.datetime | None = None,
) -> SignedValuation:
    """Value ``job`` on the worker behind ``offer`` (a pool attested for ``pool.task``); store the
    verified result. ``verify(envelope) -> ValuationReceipt`` checks signature and attestation
    (``Settings.valuation_verifier``); ``now`` is when the key service judges the attestation."""
    existing = get_valuation(db, job.job_id)
    if existing is not None:
        # Idempotent: completes the value statement of a run interrupted after storing.
        record_valuation(settings, db, job, existing)
        return existing
    if job.status != "completed" or not job.receipt_key or not job.model_digest:
        raise TrainingError(
            f"job {job.job_id} is {job.status}; only a completed job (receipt and model stored) is valued"
        )
    store = settings.object_store()
    usage_envelope = json.loads(store.get_bytes(job.receipt_key))
    usage_digest = digest_json(usage_envelope)
    usage = parse_receipt(usage_envelope)
    version = Registry(db).get_version(job.dataset, job.dataset_version)
    member = pool.member(offer)
    validation_digest = str(usage.valuation["validation_digest"])
    with tempfile.TemporaryDirectory(prefix=f"value-{job.job_id}-") as scratch:
        work = Path(scratch)
        model = _fetch(store, job.model_key, job.model_digest, work / "model.pt", "model", job.job_id)
        suffix = Path(job.validation_key or "").suffix or ".csv"
        validation = work / f"validation{suffix}"
        _fetch(store, job.validation_key, validation_digest, validation, "validation file", job.job_id)
        keys = KeyService.from_settings(settings, db).release(
            version.dataset,
            version.version,
            attestation_result=member.attestation.result_id,
            kex_envelope=member.kex_envelope,
            task=pool.task,
            now=now,
        )
        out = work / "out"
        spec = ValueSpec(
            data=JobSpec(
                job_id=job.job_id,
                period=job.period,
                run_id=f"value-{uuid.uuid4().hex[:12]}",
                provider_id=offer.provider_id,
                task=pool.task,
                dataset=version.dataset,
                dataset_version=version.version,
                data_files=(),
                shards=version_shards(settings.workspace_dir, version),
                key_release=keys.to_dict(),
                expected_merkle_root=version.merkle_root,
                schema=load_contract(settings.contracts_dir, version.contract_kind).schema.to_dict(),
                validation_file=str(validation),
                config=dict(overrides or {}),
                seed=0,
                attestation_result_id=member.attestation.result_id,
                assurance=member.attestation.assurance,
                output_dir=str(out),
                # A part of a data-parallel job is valued on its shard, the rows its receipt covers.
                shard_rank=job.shard_rank,
                shard_count=job.shard_count,
            ),
            model_file=str(model),
            model_digest=job.model_digest,
            usage_receipt_digest=usage_digest,
            near_duplicate_groups=_near_duplicate_groups(settings, version),
        )
        outcome = pool.value(offer, spec)
        receipt: ValuationReceipt = verify(outcome.receipt_envelope)
        check_binding(receipt, usage, usage_digest)
        values = Path(outcome.values_path).read_bytes()
    signed = store_valuation(db, store, receipt, outcome.receipt_envelope, values)
    record_valuation(settings, db, job, signed)
    return signed
