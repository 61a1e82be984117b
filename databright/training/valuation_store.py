"""Signed valuations as the exchange keeps them: one ``valuations`` row per training job, the
signed envelope and the values table in the object store under content-addressed keys.

A job is valued once: the row's primary key makes a second, concurrent admission fail cleanly
instead of storing a second valuation, and the envelope is re-checked against the digest its row
recorded whenever it is read back (``load_valuation_envelope``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

from databright.crypto import digest_json
from databright.db import ExchangeDB
from databright.errors import IntegrityError, TrainingError
from databright.storage.objectstore import ObjectStore
from databright.trust.valuation_receipts import ValuationReceipt

DDL = """
CREATE TABLE IF NOT EXISTS valuations (
    job_id                 VARCHAR PRIMARY KEY,   -- one signed valuation per training job
    period                 VARCHAR NOT NULL,
    provider_id            VARCHAR NOT NULL,
    attestation_result_id  VARCHAR NOT NULL,
    task                   VARCHAR NOT NULL,
    method                 VARCHAR NOT NULL,
    receipt_key            VARCHAR NOT NULL,
    receipt_digest         VARCHAR NOT NULL,      -- digest_json of the stored envelope
    usage_receipt_digest   VARCHAR NOT NULL,
    values_key             VARCHAR NOT NULL,
    valuation_digest       VARCHAR NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL
);
"""

_COLUMNS = (
    "job_id, period, provider_id, attestation_result_id, task, method, receipt_key, receipt_digest, "
    "usage_receipt_digest, values_key, valuation_digest"
)


@dataclass(frozen=True)
class SignedValuation:
    """The stored, verified valuation of one job (a ``valuations`` row)."""

    job_id: str
    period: str
    provider_id: str
    attestation_result_id: str
    task: str
    method: str
    receipt_key: str
    receipt_digest: str
    usage_receipt_digest: str
    values_key: str
    valuation_digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_valuation(db: ExchangeDB, job_id: str) -> SignedValuation | None:
    rows = db.query(f"SELECT {_COLUMNS} FROM valuations WHERE job_id = ?", [job_id])
    return SignedValuation(*rows[0]) if rows else None


def list_valuations(db: ExchangeDB, period: str) -> list[SignedValuation]:
    rows = db.query(f"SELECT {_COLUMNS} FROM valuations WHERE period = ? ORDER BY job_id", [period])
    return [SignedValuation(*r) for r in rows]


def unvalued_jobs(db: ExchangeDB, period: str) -> list[str]:
    """Completed jobs of ``period`` that have no signed valuation yet, by job id."""
    rows = db.query(
        """SELECT j.job_id FROM jobs j LEFT JOIN valuations v USING (job_id)
           WHERE j.period = ? AND j.status = 'completed' AND v.job_id IS NULL ORDER BY j.job_id""",
        [period],
    )
    return [str(r[0]) for r in rows]


def load_valuation_envelope(store: ObjectStore, valuation: SignedValuation) -> dict[str, Any]:
    """The stored envelope, checked against the digest its row holds."""
    envelope = json.loads(store.get_bytes(valuation.receipt_key))
    if not isinstance(envelope, dict) or digest_json(envelope) != valuation.receipt_digest:
        raise IntegrityError(
            f"the stored valuation receipt of job {valuation.job_id} at {valuation.receipt_key} does not "
            f"match the digest {valuation.receipt_digest[:16]}… recorded when it was admitted; the object "
            "store was altered — restore it from backup or value the job again",
            job_id=valuation.job_id,
        )
    return envelope


def store_valuation(
    db: ExchangeDB, store: ObjectStore, receipt: ValuationReceipt, envelope: dict[str, Any], values: bytes
) -> SignedValuation:
    """Keep a verified valuation: the envelope and values table in the object store, one row."""
    digest = digest_json(envelope)
    signed = SignedValuation(
        job_id=receipt.job_id,
        period=receipt.period,
        provider_id=receipt.provider_id,
        attestation_result_id=receipt.attestation_result_id,
        task=receipt.task,
        method=receipt.method,
        receipt_key=f"valuations/{receipt.period}/{receipt.job_id}/{digest}.dsse.json",
        receipt_digest=digest,
        usage_receipt_digest=receipt.usage_receipt_digest,
        values_key=f"valuations/{receipt.period}/{receipt.job_id}/{receipt.values_root}.parquet",
        valuation_digest=receipt.valuation_digest,
    )
    # Content-addressed keys: a losing concurrent run writes its own objects and never overwrites.
    store.put_bytes(signed.values_key, values)
    store.put_bytes(signed.receipt_key, json.dumps(envelope, sort_keys=True, indent=2).encode("utf-8"))
    try:
        with db.transaction() as con:
            con.execute(
                f"INSERT INTO valuations ({_COLUMNS}, created_at) VALUES ({', '.join(['?'] * 12)})",
                [*asdict(signed).values(), dt.datetime.now(dt.UTC)],
            )
    except Exception as exc:  # a primary-key conflict, whichever class the driver raises it as
        winner = get_valuation(db, receipt.job_id)
        if winner is None:
            raise
        raise TrainingError(
            f"job {receipt.job_id} was valued by another run while this one ran (stored "
            f"{winner.receipt_key}); its valuation stands — nothing was stored twice",
            job_id=receipt.job_id,
        ) from exc
    return signed
