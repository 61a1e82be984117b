"""Test helpers for settlement: signed usage receipts, escrowed jobs and a verify function.

The receipts here are real Ed25519 DSSE envelopes built with ``databright.crypto``; ``make_verify``
opens them with the session's public key, so a tampered or foreign receipt really fails.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from databright.crypto import PublicKey, SigningKey, open_envelope, sha256_hex, sign_envelope
from databright.db import ExchangeDB
from databright.errors import IntegrityError, ReceiptRejected
from databright.ledger import escrow_job_payment
from databright.storage.objectstore import ObjectStore

RECEIPT_TYPE = "application/vnd.databright.test-usage-receipt+json"
PERIOD = "2026-11"


@dataclass(frozen=True)
class Usage:
    rows_used: int
    visits: int
    value: float


@dataclass(frozen=True)
class Receipt:
    period: str
    job_id: str
    provider_id: str
    attestation_result_id: str
    assurance: str
    measurement: str
    dataset: str
    dataset_version: int
    dataset_merkle_root: str
    owners: dict[str, Usage]
    records_root: str
    work_units: int
    model_digest: str
    issued_at: str


def hexdigest(label: str) -> str:
    return sha256_hex(label.encode())


def make_receipt(
    job_id: str,
    owners: Mapping[str, tuple[int, int, float]],
    *,
    provider_id: str = "p1",
    dataset: str = "census",
    dataset_version: int = 1,
    work_units: int = 1200,
    assurance: str = "simulated",
    period: str = PERIOD,
) -> Receipt:
    return Receipt(
        period=period,
        job_id=job_id,
        provider_id=provider_id,
        attestation_result_id=f"ar-{provider_id}",
        assurance=assurance,
        measurement=hexdigest("measurement"),
        dataset=dataset,
        dataset_version=dataset_version,
        dataset_merkle_root=hexdigest(f"{dataset}-v{dataset_version}"),
        owners={o: Usage(*u) for o, u in owners.items()},
        records_root=hexdigest(f"records-{job_id}"),
        work_units=work_units,
        model_digest=hexdigest(f"model-{job_id}"),
        issued_at="2026-11-15T12:00:00+00:00",
    )


def sign_receipt(key: SigningKey, receipt: Receipt) -> dict[str, Any]:
    payload = json.dumps(dataclasses.asdict(receipt), sort_keys=True).encode()
    return sign_envelope(key, RECEIPT_TYPE, payload)


def make_verify(public_key: PublicKey) -> Callable[[dict[str, Any]], Receipt]:
    def verify(envelope: dict[str, Any]) -> Receipt:
        try:
            payload = open_envelope(envelope, RECEIPT_TYPE, public_key)
        except IntegrityError as exc:
            raise ReceiptRejected(f"usage receipt signature check failed: {exc}") from exc
        data = json.loads(payload)
        data["owners"] = {o: Usage(**u) for o, u in data["owners"].items()}
        return Receipt(**data)

    return verify


def add_job(
    db: ExchangeDB,
    store: ObjectStore,
    key: SigningKey,
    receipt: Receipt,
    *,
    payment: int,
    trainer_id: str = "acme",
    escrow: bool = True,
    status: str = "completed",
    envelope: dict[str, Any] | None = None,
) -> str:
    """Escrow the payment, store the signed receipt and insert the job row; return the receipt key."""
    if escrow:
        escrow_job_payment(
            db, trainer_id=trainer_id, job_id=receipt.job_id, period=receipt.period, amount=payment
        )
    receipt_key = f"receipts/{receipt.period}/{receipt.job_id}.json"
    store.put_bytes(receipt_key, json.dumps(envelope or sign_receipt(key, receipt)).encode())
    with db.transaction() as con:
        con.execute(
            """INSERT INTO jobs (job_id, period, trainer_id, dataset, dataset_version, task, payment,
                   provider_id, offer_id, status, receipt_key, model_key, model_digest, work_units,
                   created_at)
               VALUES (?, ?, ?, ?, ?, 'tabular_logreg', ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                receipt.job_id,
                receipt.period,
                trainer_id,
                receipt.dataset,
                receipt.dataset_version,
                payment,
                receipt.provider_id,
                f"offer-{receipt.provider_id}",
                status,
                receipt_key,
                f"models/{receipt.job_id}.pt",
                receipt.model_digest,
                receipt.work_units,
                dt.datetime.now(dt.UTC),
            ],
        )
    return receipt_key


def transfers_table(db: ExchangeDB) -> list[tuple[Any, ...]]:
    """Every column of every transfer, created_at included, in a stable order."""
    return db.query("SELECT * FROM transfers ORDER BY transfer_id")
