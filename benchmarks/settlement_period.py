"""The settlement benchmark's synthetic period: its shapes, the providers' session keys and verifiers,
and ``generate``, which writes a period straight into a fresh file-backed exchange home (see
``benchmarks.settlement`` for what is measured on it)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PERIOD = "2026-11"
PROVIDERS = 8
TRAINERS = 4
DATASET, DATASET_VERSION = "bench", 1


@dataclass(frozen=True)
class Shape:
    holders: int
    jobs: int
    rows: int

    @property
    def label(self) -> str:
        return f"{self.holders:,} holders, {self.jobs:,} jobs, {self.rows:,} usage rows"


# The brief's ladder is 10k and 100k holders; the small rungs below them give repeats, whole statements
# and a fit before the big rungs are tried (each runs only when predicted under --rung-limit-s).
# Rungs keep 10 jobs per holder and 1,000 owners per job, so one size (usage rows) fits the ladder.
LADDER = (
    Shape(1_000, 10, 10_000),
    Shape(3_000, 30, 30_000),
    Shape(10_000, 100, 100_000),
    Shape(100_000, 1_000, 1_000_000),
)
FULL = Shape(1_000_000, 10_000, 10_000_000)
QUICK = Shape(1_000, 2, 2_000)


# --- keys and verifiers (the generator and the child derive the same keys from fixed seeds) ----


def provider_keys() -> dict[str, Any]:
    from databright.crypto import SigningKey

    return {
        f"prov-{p:02d}": SigningKey.from_seed(f"bench settlement session {p}".encode())
        for p in range(PROVIDERS)
    }


class SessionVerifier:
    """Opens an envelope with the session key its signature names (real Ed25519), then parses it into
    the real receipt type; what ``Settings.receipt_verifier`` does minus the attestation lookup."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.public = {k.public_key.key_id: k.public_key for k in keys.values()}

    def _open(self, envelope: dict[str, Any], payload_type: str) -> Any:
        from databright.crypto import open_envelope
        from databright.errors import IntegrityError, ReceiptRejected

        signatures = envelope.get("signatures") if isinstance(envelope, dict) else None
        keyid = signatures[0].get("keyid") if isinstance(signatures, list) and signatures else None
        key = self.public.get(keyid) if isinstance(keyid, str) else None
        if key is None:
            raise ReceiptRejected(f"envelope signed by unknown key {keyid!r}", reason="SIGNATURE_INVALID")
        try:
            return json.loads(open_envelope(envelope, payload_type, key))
        except IntegrityError as exc:
            raise ReceiptRejected(f"signature check failed: {exc}", reason="SIGNATURE_INVALID") from exc

    def usage(self, envelope: dict[str, Any]) -> Any:
        from databright.trust import USAGE_RECEIPT_TYPE, UsageReceipt

        return UsageReceipt.from_statement(self._open(envelope, USAGE_RECEIPT_TYPE))

    def valuation(self, envelope: dict[str, Any]) -> Any:
        from databright.trust import VALUATION_RECEIPT_TYPE
        from databright.trust.valuation_receipts import ValuationReceipt

        return ValuationReceipt.from_statement(self._open(envelope, VALUATION_RECEIPT_TYPE))


# --- the generator ------------------------------------------------------------------------------


def _hex(label: str) -> str:
    from databright.crypto import sha256_hex

    return sha256_hex(label.encode())


def generate(home: Path, shape: Shape, seed: int = 7) -> dict[str, Any]:
    """Write the synthetic period into a fresh home; return what was written."""
    import datetime as dt

    from databright.config import Settings
    from databright.crypto import digest_json
    from databright.ledger import ESCROW, Ledger, Transfer, TransferCode, deposit, trainer_account
    from databright.storage.objectstore import LocalObjectStore
    from databright.training.valuation_store import store_valuation
    from databright.trust import OwnerUsage, OwnerValue, UsageReceipt, sign_receipt, sign_valuation_receipt
    from databright.trust.valuation_receipts import ValuationReceipt

    if shape.rows % shape.jobs or shape.rows // shape.jobs > shape.holders:
        raise SystemExit(
            f"{shape.label}: rows must split evenly over jobs, at most one row per holder per job"
        )
    started = time.perf_counter()
    settings = Settings(home=home, project_root=PROJECT_ROOT, period=PERIOD).ensure_dirs()
    db, store = settings.exchange_db(), LocalObjectStore(settings.store_dir)
    rng = np.random.default_rng(seed)
    keys = provider_keys()
    providers = sorted(keys)
    per_job = shape.rows // shape.jobs
    payments = rng.integers(1_000_000, 50_000_000, size=shape.jobs)
    trainers = [f"trainer-{t}" for t in range(TRAINERS)]
    names = np.array([f"c{h:07d}" for h in range(shape.holders)], dtype=object)
    measurement, root = _hex("measurement"), _hex(f"{DATASET}-v{DATASET_VERSION}")
    issued = "2026-11-15T12:00:00+00:00"
    for t, trainer in enumerate(trainers[: shape.jobs]):  # jobs go round the trainers: job j to trainer j % T
        deposit(db, trainer, int(payments[t::TRAINERS].sum()), reference=f"bench-wire-{t}")
    escrows, job_rows = [], []
    for j in range(shape.jobs):
        job_id, provider, trainer = f"job-{j:06d}", providers[j % PROVIDERS], trainers[j % TRAINERS]
        # A contiguous block of holders per job, wrapping: every holder is used in rows/holders jobs.
        owners = names[(np.arange(per_job) + j * per_job) % shape.holders]
        rows_used = rng.integers(1, 20, size=per_job)
        visits = rows_used * rng.integers(1, 5, size=per_job)
        values = rng.normal(2e-4, 1e-4, size=per_job)  # a few negative: clipped by the policy
        work_units = int(visits.sum()) * 14
        receipt = UsageReceipt(
            period=PERIOD, job_id=job_id, run_id=f"run-{job_id}", provider_id=provider,
            attestation_result_id=f"ar-{provider}", assurance="simulated", measurement=measurement,
            task="tabular_logreg", dataset=DATASET, dataset_version=DATASET_VERSION, dataset_merkle_root=root,
            owners={
                str(o): OwnerUsage(int(r), int(v), float(x))
                for o, r, v, x in zip(owners, rows_used, visits, values, strict=True)
            },
            records_root=_hex(f"records-{job_id}"),
            valuation={"method": "knn-shapley", "params": {"k": 5}, "validation_digest": _hex("validation")},
            work_units=work_units, model_digest=_hex(f"model-{job_id}"), sequence=j // PROVIDERS,
            previous_receipt_digest=None, issued_at=issued,
        )  # fmt: skip
        envelope = sign_receipt(keys[provider], receipt)
        receipt_key = f"receipts/{PERIOD}/{job_id}.json"
        store.put_bytes(receipt_key, json.dumps(envelope).encode())
        valuation = ValuationReceipt(
            period=PERIOD, job_id=job_id, run_id=f"value-{job_id}", provider_id=provider,
            attestation_result_id=f"ar-{provider}", assurance="simulated", measurement=measurement,
            task="knn_shapley", dataset=DATASET, dataset_version=DATASET_VERSION, dataset_merkle_root=root,
            usage_receipt_digest=digest_json(envelope), model_digest=receipt.model_digest,
            validation_digest=_hex("validation"), method="knn-shapley", params={"k": 5}, seed=seed,
            valuation_digest=_hex(f"valuation-{job_id}"),
            owners={o: OwnerValue(u.rows_used, u.value) for o, u in receipt.owners.items()},
            values_root=_hex(f"values-{job_id}"), near_duplicate_groups=0, sequence=j // PROVIDERS,
            previous_receipt_digest=None, issued_at=issued,
        )  # fmt: skip
        values_table = json.dumps({o: u.value for o, u in receipt.owners.items()}).encode()
        store_valuation(db, store, valuation, sign_valuation_receipt(keys[provider], valuation), values_table)
        payment = int(payments[j])
        escrows.append(
            Transfer.create(
                {"kind": "escrow", "job": job_id}, debit_account=trainer_account(trainer),
                credit_account=ESCROW,
                amount=payment, code=TransferCode.ESCROW, period=PERIOD, job_id=job_id,
                memo=f"escrow job {job_id} of trainer {trainer}",
            )
        )  # fmt: skip
        job_rows.append(
            [job_id, PERIOD, trainer, DATASET, DATASET_VERSION, "tabular_logreg", payment, payment, provider,
             f"offer-{provider}", "completed", receipt_key, f"models/{job_id}.pt", receipt.model_digest,
             work_units, dt.datetime.now(dt.UTC)]
        )  # fmt: skip
    with db.transaction() as con:
        Ledger(db).post(con, escrows)
        con.executemany(
            """INSERT INTO jobs (job_id, period, trainer_id, dataset, dataset_version, task, payment,
                   budget, provider_id, offer_id, status, receipt_key, model_key, model_digest,
                   work_units, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            job_rows,
        )
    size = sum(f.stat().st_size for f in home.rglob("*") if f.is_file())
    return {
        "generate_s": time.perf_counter() - started,
        "payments_total": int(payments.sum()),
        "home_bytes": size,
        "owners_per_job": per_job,
        "jobs_per_holder": shape.rows / shape.holders,
    }
