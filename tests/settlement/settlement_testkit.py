"""Test helpers for settlement: signed usage receipts and valuations, escrowed jobs, verify functions.

The receipts here are real Ed25519 DSSE envelopes built with ``databright.crypto``; ``make_verify``
and ``make_verify_valuation`` open them with the session's public key, so a tampered or foreign
receipt really fails. ``add_job`` also stores a signed valuation of the job (the values settlement
pays on), bound to the digest of the job's usage receipt envelope as the value task binds it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from databright.crypto import PublicKey, SigningKey, digest_json, open_envelope, sha256_hex, sign_envelope
from databright.db import ExchangeDB
from databright.errors import IntegrityError, ReceiptRejected
from databright.ledger import escrow_job_payment
from databright.storage.objectstore import ObjectStore

RECEIPT_TYPE = "application/vnd.databright.test-usage-receipt+json"
VALUATION_TYPE = "application/vnd.databright.test-valuation-receipt+json"
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


@dataclass(frozen=True)
class Part:
    records: int
    value: float


@dataclass(frozen=True)
class Valuation:
    """The fields of ``ValuationReceipt`` that settlement and the valuation store read."""

    period: str
    job_id: str
    provider_id: str
    attestation_result_id: str
    task: str
    method: str
    dataset: str
    dataset_version: int
    dataset_merkle_root: str
    usage_receipt_digest: str
    model_digest: str
    valuation_digest: str
    values_root: str
    owners: dict[str, Part]


def make_valuation(
    receipt: Receipt, usage_envelope: dict[str, Any], values: Mapping[str, float] | None = None
) -> Valuation:
    """A valuation of ``receipt``'s job: ``values`` per owner (default: the receipt's own values)."""
    chosen = dict(values) if values is not None else {o: u.value for o, u in receipt.owners.items()}
    return Valuation(
        period=receipt.period,
        job_id=receipt.job_id,
        provider_id=receipt.provider_id,
        attestation_result_id=receipt.attestation_result_id,
        task="knn_shapley",
        method="knn-shapley",
        dataset=receipt.dataset,
        dataset_version=receipt.dataset_version,
        dataset_merkle_root=receipt.dataset_merkle_root,
        usage_receipt_digest=digest_json(usage_envelope),
        model_digest=receipt.model_digest,
        valuation_digest=hexdigest(f"valuation-{receipt.job_id}-{sorted(chosen.items())}"),
        values_root=hexdigest(f"values-{receipt.job_id}-{sorted(chosen.items())}"),
        owners={
            o: Part(receipt.owners[o].rows_used if o in receipt.owners else 1, v) for o, v in chosen.items()
        },
    )


def sign_valuation(key: SigningKey, valuation: Valuation) -> dict[str, Any]:
    payload = json.dumps(dataclasses.asdict(valuation), sort_keys=True).encode()
    return sign_envelope(key, VALUATION_TYPE, payload)


def make_verify_valuation(public_key: PublicKey) -> Callable[[dict[str, Any]], Valuation]:
    def verify(envelope: dict[str, Any]) -> Valuation:
        try:
            payload = open_envelope(envelope, VALUATION_TYPE, public_key)
        except IntegrityError as exc:
            raise ReceiptRejected(f"valuation receipt signature check failed: {exc}") from exc
        data = json.loads(payload)
        data["owners"] = {o: Part(**p) for o, p in data["owners"].items()}
        return Valuation(**data)

    return verify


def add_valuation(
    store: ObjectStore,
    db: ExchangeDB,
    key: SigningKey,
    valuation: Valuation,
    envelope: dict[str, Any] | None = None,
) -> None:
    """Store a signed valuation as the value step does (valuation_store.store_valuation)."""
    from databright.training.valuation_store import store_valuation

    store_valuation(db, store, valuation, envelope or sign_valuation(key, valuation), b"values")  # type: ignore[arg-type]


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
    budget: int | None = None,
    trainer_id: str = "acme",
    escrow: bool = True,
    status: str = "completed",
    envelope: dict[str, Any] | None = None,
    values: Mapping[str, float] | None = None,
    valued: bool = True,
) -> str:
    """Escrow the budget (default: the payment), store the signed receipt and insert the job row;
    unless ``valued`` is false, also store a signed valuation of it (``values`` per owner, default
    the receipt's own); return the receipt key."""
    budget = payment if budget is None else budget
    if escrow:
        escrow_job_payment(
            db, trainer_id=trainer_id, job_id=receipt.job_id, period=receipt.period, amount=budget
        )
    receipt_key = f"receipts/{receipt.period}/{receipt.job_id}.json"
    envelope = envelope or sign_receipt(key, receipt)
    store.put_bytes(receipt_key, json.dumps(envelope).encode())
    with db.transaction() as con:
        con.execute(
            """INSERT INTO jobs (job_id, period, trainer_id, dataset, dataset_version, task, payment,
                   budget, provider_id, offer_id, status, receipt_key, model_key, model_digest,
                   work_units, created_at)
               VALUES (?, ?, ?, ?, ?, 'tabular_logreg', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                receipt.job_id,
                receipt.period,
                trainer_id,
                receipt.dataset,
                receipt.dataset_version,
                payment,
                budget,
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
    if valued:
        add_valuation(store, db, key, make_valuation(receipt, envelope, values))
    return receipt_key


def transfers_table(db: ExchangeDB) -> list[tuple[Any, ...]]:
    """Every column of every transfer, created_at included, in a stable order."""
    return db.query("SELECT * FROM transfers ORDER BY transfer_id")
