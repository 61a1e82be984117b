"""Valuation receipts: the record values a job's dividends are paid on, signed inside an enclave.

The value step is its own enclave task (``enclave_tasks/knn_shapley``): an attested worker reads
the same sealed dataset version the job trained on, the trainer's validation file and the trained
model, values every record, and signs a ``ValuationReceipt`` with its session key — the same
DSSE-wrapped in-toto Statement v1 as a usage receipt, with its own ``payloadType`` and predicate
so that neither can ever be mistaken for the other. Settlement pays the data share only on the
per-owner values of a receipt that verifies (``verify_valuation_receipt``) and that names the exact
usage receipt it values (``usage_receipt_digest``), so no value computed outside attested code can
move money.

The predicate states what was valued (dataset version and Merkle root, the model's digest, the
validation file's digest), how (method, parameters, seed, the ``ValuationResult`` digest, which
covers library versions), and the result: per owner the number of records and their summed value,
and ``values_root``, a Merkle root over every ``(owner, record_id, value)`` in dataset order, whose
leaves the worker hands back in a Parquet table anyone can re-derive the root from.

Each session keeps one chain of valuation receipts (``sequence`` from 0, ``previous_receipt_digest``),
separate from its chain of usage receipts, so a session that does both keeps both gap-free.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from databright.crypto import SigningKey, canonical_json, merkle_root_hex, sha256_hex, sign_envelope
from databright.errors import AttestationError, ReceiptRejected
from databright.trust.evidence import VALUATION_RECEIPT_TYPE, parse_iso
from databright.trust.receipts import STATEMENT_TYPE, envelope_payload, statement_json, verify_signed_under

if TYPE_CHECKING:
    from databright.trust.verifier import AttestationResult

RECEIPT_VERSION = 1
PREDICATE_TYPE = "https://databright.dev/valuation-receipt/v1"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _malformed(message: str) -> ReceiptRejected:
    return ReceiptRejected(f"malformed valuation receipt: {message}", reason="MALFORMED")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class OwnerValue:
    """One owner's part of a valuation: how many of their records were valued, and their summed value."""

    records: int
    value: float

    def __post_init__(self) -> None:
        if not _is_int(self.records) or self.records < 1:
            raise _malformed(f"records {self.records!r} must be a positive integer")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _malformed(f"value {value!r} must be a finite number")
        # Always a float, so an integral value is written 0.0 and re-serialises to the same bytes.
        object.__setattr__(self, "value", float(value))

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "value": self.value}


def values_leaf(owner: str, record_id: str, value: float) -> bytes:
    """The Merkle leaf data for one record's value: ``canonical_json([owner, record_id, value])``."""
    return canonical_json([owner, record_id, float(value)])


def values_root(rows: Iterable[tuple[str, str, float]]) -> str:
    """Hex Merkle root over ``(owner, record_id, value)`` rows, in dataset order."""
    return merkle_root_hex([values_leaf(*row) for row in rows])


def owner_values(owners: Iterable[str], values: Iterable[float]) -> dict[str, OwnerValue]:
    """Records and ``math.fsum`` of values per owner (fsum: the sum does not depend on row order)."""
    grouped: dict[str, list[float]] = {}
    for owner, value in zip(owners, values, strict=True):
        grouped.setdefault(owner, []).append(float(value))
    return {o: OwnerValue(records=len(v), value=math.fsum(v)) for o, v in sorted(grouped.items())}


@dataclass(frozen=True, kw_only=True)
class ValuationReceipt:
    receipt_version: int = RECEIPT_VERSION
    period: str
    job_id: str  # the training job whose records were valued
    run_id: str
    provider_id: str
    attestation_result_id: str
    assurance: str
    measurement: str
    task: str  # the value task (e.g. knn_shapley), whose measurement the attestation result names
    dataset: str
    dataset_version: int
    dataset_merkle_root: str
    usage_receipt_digest: str  # digest_json of the usage receipt envelope being valued
    model_digest: str
    validation_digest: str
    method: str
    params: dict[str, Any]
    seed: int | None
    valuation_digest: str  # ValuationResult.digest: method, params, seed, inputs, versions, values
    owners: dict[str, OwnerValue]
    values_root: str
    near_duplicate_groups: int
    sequence: int
    previous_receipt_digest: str | None
    issued_at: str

    def __post_init__(self) -> None:
        if self.receipt_version != RECEIPT_VERSION:
            raise _malformed(f"receipt_version {self.receipt_version!r}; this exchange reads version 1")
        if not isinstance(self.period, str) or not _PERIOD.match(self.period):
            raise _malformed(f"period {self.period!r} is not YYYY-MM")
        for name in (
            "job_id",
            "run_id",
            "provider_id",
            "attestation_result_id",
            "assurance",
            "task",
            "dataset",
            "method",
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise _malformed(f"{name} {value!r} must be a non-empty string")
        for name in (
            "measurement",
            "dataset_merkle_root",
            "usage_receipt_digest",
            "model_digest",
            "validation_digest",
            "valuation_digest",
            "values_root",
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not _HEX64.match(value):
                raise _malformed(f"{name} {value!r} must be 64 lowercase hex digits")
        prev = self.previous_receipt_digest
        if prev is not None and (not isinstance(prev, str) or not _HEX64.match(prev)):
            raise _malformed(f"previous_receipt_digest {prev!r} must be null or 64 lowercase hex digits")
        for name in ("dataset_version", "near_duplicate_groups", "sequence"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise _malformed(f"{name} {value!r} must be a non-negative integer")
        if self.seed is not None and not _is_int(self.seed):
            raise _malformed(f"seed {self.seed!r} must be an integer or null")
        if (
            not isinstance(self.owners, dict)
            or not self.owners
            or not all(isinstance(k, str) and k and isinstance(v, OwnerValue) for k, v in self.owners.items())
        ):
            raise _malformed("owners must map one or more owner ids to OwnerValue")
        if not isinstance(self.params, dict):
            raise _malformed(f"params {self.params!r} must be an object")
        try:
            canonical_json(self.params)
        except (TypeError, ValueError) as exc:
            raise _malformed(f"params has a value with no canonical JSON form ({exc})") from exc
        try:
            parse_iso(self.issued_at, field="issued_at")
        except AttestationError as exc:
            raise _malformed(exc.message) from exc

    @property
    def issued_at_time(self) -> dt.datetime:
        return parse_iso(self.issued_at, field="issued_at")

    @property
    def total(self) -> float:
        return math.fsum(v.value for v in self.owners.values())

    def predicate(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["owners"] = {owner: part.to_dict() for owner, part in sorted(self.owners.items())}
        data["params"] = dict(self.params)
        return data

    def _subject(self) -> list[dict[str, Any]]:
        return [{"name": f"values:{self.job_id}", "digest": {"sha256": self.values_root}}]

    def statement(self) -> dict[str, Any]:
        """The in-toto Statement v1 this receipt is signed as; its subject is the values table."""
        return {
            "_type": STATEMENT_TYPE,
            "subject": self._subject(),
            "predicateType": PREDICATE_TYPE,
            "predicate": self.predicate(),
        }

    @classmethod
    def from_statement(cls, statement: Any) -> ValuationReceipt:
        if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
            got = statement.get("_type") if isinstance(statement, dict) else type(statement).__name__
            raise _malformed(f"not an in-toto Statement v1 (_type {got!r})")
        if statement.get("predicateType") != PREDICATE_TYPE:
            raise _malformed(f"predicateType {statement.get('predicateType')!r}, expected {PREDICATE_TYPE}")
        predicate = statement.get("predicate")
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(predicate, dict) or set(predicate) != names:
            got = sorted(predicate) if isinstance(predicate, dict) else type(predicate).__name__
            raise _malformed(f"predicate has fields {got}, expected {sorted(names)}")
        owners = predicate["owners"]
        if not isinstance(owners, dict):
            raise _malformed(f"owners is {type(owners).__name__}, expected an object")
        try:
            parsed = {owner: OwnerValue(**part) for owner, part in owners.items()}
        except TypeError as exc:
            raise _malformed(f"owner values need records and value ({exc})") from exc
        receipt = cls(**{**predicate, "owners": parsed})
        if statement.get("subject") != receipt._subject():
            raise _malformed(f"subject {statement.get('subject')!r} does not name {receipt._subject()!r}")
        return receipt


class UsageLike(Protocol):
    @property
    def job_id(self) -> str: ...
    @property
    def period(self) -> str: ...
    @property
    def dataset(self) -> str: ...
    @property
    def dataset_version(self) -> int: ...
    @property
    def dataset_merkle_root(self) -> str: ...
    @property
    def model_digest(self) -> str: ...
    @property
    def owners(self) -> Mapping[str, Any]: ...


class ValuationLike(UsageLike, Protocol):
    @property
    def usage_receipt_digest(self) -> str: ...


def check_binding(valuation: ValuationLike, usage: UsageLike, usage_receipt_digest: str) -> None:
    """Refuse a valuation that does not value exactly ``usage``: another receipt, job, period,
    dataset version or model, or a different set of owners than the job used."""
    pairs = (
        ("usage_receipt_digest", valuation.usage_receipt_digest, usage_receipt_digest),
        ("job_id", valuation.job_id, usage.job_id),
        ("period", valuation.period, usage.period),
        ("dataset", valuation.dataset, usage.dataset),
        ("dataset_version", int(valuation.dataset_version), int(usage.dataset_version)),
        ("dataset_merkle_root", valuation.dataset_merkle_root, usage.dataset_merkle_root),
        ("model_digest", valuation.model_digest, usage.model_digest),
        ("owners", sorted(valuation.owners), sorted(usage.owners)),
    )
    wrong = [f"{name} {got!r} != the usage receipt's {want!r}" for name, got, want in pairs if got != want]
    if wrong:
        raise ReceiptRejected(
            f"the valuation of job {usage.job_id} does not value its usage receipt: "
            + "; ".join(wrong)
            + "; value the job again with the value flow",
            reason="VALUATION_MISMATCH",
        )


def sign_valuation_receipt(session_key: SigningKey, receipt: ValuationReceipt) -> dict[str, Any]:
    """DSSE envelope over the receipt's in-toto Statement, signed by the enclave's session key."""
    return sign_envelope(session_key, VALUATION_RECEIPT_TYPE, canonical_json(receipt.statement()))


def _payload(envelope: Any) -> bytes:
    return envelope_payload(envelope, VALUATION_RECEIPT_TYPE, _malformed)


def _statement(payload: bytes) -> ValuationReceipt:
    return ValuationReceipt.from_statement(statement_json(payload, _malformed))


def parse_valuation_receipt(envelope: dict[str, Any]) -> ValuationReceipt:
    """The receipt inside ``envelope``, with no signature or attestation checks (for routing only)."""
    return _statement(_payload(envelope))


def valuation_receipt_digest(envelope: dict[str, Any]) -> str:
    """Hex sha256 of the signed statement bytes: what the next receipt's ``previous_receipt_digest`` holds."""
    return sha256_hex(_payload(envelope))


def verify_valuation_receipt(
    envelope: dict[str, Any], result: AttestationResult, *, now: dt.datetime | None = None
) -> ValuationReceipt:
    """Check the receipt was signed by ``result``'s session key and agrees with the result.

    Raises ``ReceiptRejected`` with the reason codes of ``receipts.verify_receipt``.
    """
    return verify_signed_under(
        envelope,
        result,
        payload_type=VALUATION_RECEIPT_TYPE,
        payload=_payload,
        parse=_statement,
        what="valuation receipt",
        now=now,
    )
