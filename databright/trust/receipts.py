"""Usage receipts: what an attested session read and did, signed by its session key.

A receipt is an in-toto Statement v1 whose subject is the trained model and whose predicate is a
``UsageReceipt``: which dataset version was read, how many rows and visits per owner, a Merkle root
over every (owner, record, visits, value), the valuation that priced the records, the attested
work units, and a per-session sequence number chained to the previous receipt's digest. It is
wrapped in a DSSE envelope signed by the session key that the attestation result bound to the
measured code, so settlement can pay from it without trusting the host that ran the worker.

Floats (per-record and per-owner values) are written by canonical JSON with Python's ``repr``,
which round-trips every finite float exactly, so a verifier re-derives the same bytes and roots.

The optional ``compute`` member (a ``ComputeClaim``: devices, wall-clock seconds, device-seconds) is
the worker's own account of the hardware time it used. It is signed with the rest, but it is a
*claim*: intake flags one that exceeds what the devices could do in the wall-clock time, and nothing
is ever paid from it — compute is paid by the attested ``work_units`` alone. It is still receipt
version 1: when absent the member is left out of the statement entirely, so receipts made before it
existed keep their bytes, digests and chains; a reader that predates it refuses a receipt carrying it
as malformed rather than misreading it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_string
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from databright.crypto import (
    SigningKey,
    canonical_json,
    merkle_root_hex,
    open_envelope,
    sha256_hex,
    sign_envelope,
)
from databright.errors import AttestationError, IntegrityError, ReceiptRejected
from databright.trust.evidence import USAGE_RECEIPT_TYPE, parse_iso, utc

if TYPE_CHECKING:
    import pandas as pd

    from databright.trust.verifier import AttestationResult

RECEIPT_VERSION = 1
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://databright.dev/usage-receipt/v1"
# A worker's clock may run a little ahead of the exchange's; more than this is refused.
CLOCK_SKEW = dt.timedelta(minutes=5)
# A compute claim may exceed devices × wall clock by this much before it is flagged: per-device
# timers start and stop a little apart from the job's wall clock (the relative part) and are coarse
# for jobs of a few seconds (the absolute part).
COMPUTE_TOLERANCE_RATIO = 0.01
COMPUTE_TOLERANCE_S = 1.0
# More devices than any one job spans; the bound keeps devices × wall clock a finite float.
MAX_DEVICES = 1 << 20

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _malformed(message: str) -> ReceiptRejected:
    return ReceiptRejected(f"malformed usage receipt: {message}", reason="MALFORMED")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class OwnerUsage:
    """One owner's share of a job: rows of theirs that were read, total visits, and summed value."""

    rows_used: int
    visits: int
    value: float

    def __post_init__(self) -> None:
        for name in ("rows_used", "visits"):
            amount = getattr(self, name)
            if not _is_int(amount) or amount < 0:
                raise _malformed(f"{name} {amount!r} must be a non-negative integer")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _malformed(f"value {value!r} must be a finite number")
        # Always a float, so an integral value is written 0.0 and re-serialises to the same bytes.
        object.__setattr__(self, "value", float(value))

    def to_dict(self) -> dict[str, Any]:
        return {"rows_used": self.rows_used, "visits": self.visits, "value": self.value}


def _finite_non_negative(name: str, value: Any) -> float:
    """``value`` as a float, or a MALFORMED rejection naming ``name``."""
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer too large for a float
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise _malformed(f"compute {name} {value!r:.40} must be a finite number of seconds >= 0")
    # Always a float, so an integral claim is written 12.0 and re-serialises to the same bytes.
    return number


@dataclass(frozen=True)
class ComputeClaim:
    """The worker's own, signed account of the hardware time a job used; never a basis for payment.

    ``devices``: accelerators (or CPU workers) the job ran on, at least 1; ``wall_clock_s``: seconds
    from the job's start to its end on the worker's monotonic clock; ``device_seconds``: the busy time
    summed over the devices. ``device_seconds`` cannot honestly exceed ``devices * wall_clock_s``.
    """

    devices: int
    wall_clock_s: float
    device_seconds: float

    def __post_init__(self) -> None:
        if not _is_int(self.devices) or not 1 <= self.devices <= MAX_DEVICES:
            raise _malformed(
                f"compute devices {self.devices!r:.40} must be an integer from 1 to {MAX_DEVICES}"
            )
        object.__setattr__(self, "wall_clock_s", _finite_non_negative("wall_clock_s", self.wall_clock_s))
        object.__setattr__(
            self, "device_seconds", _finite_non_negative("device_seconds", self.device_seconds)
        )

    @property
    def limit_s(self) -> float:
        """The most device-seconds an honest claim may state: devices × wall clock, plus the tolerance."""
        return self.devices * self.wall_clock_s * (1 + COMPUTE_TOLERANCE_RATIO) + COMPUTE_TOLERANCE_S

    @property
    def exceeds_wall_clock(self) -> bool:
        return self.device_seconds > self.limit_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "wall_clock_s": self.wall_clock_s,
            "device_seconds": self.device_seconds,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ComputeClaim:
        names = {"devices", "wall_clock_s", "device_seconds"}
        if not isinstance(data, dict) or set(data) != names:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise _malformed(f"compute has fields {got}, expected {sorted(names)}")
        return cls(**data)


def records_leaf(owner: str, record_id: str, visits: int, value: float) -> bytes:
    """The Merkle leaf data for one record's use: ``canonical_json([owner, record_id, visits, value])``.

    A job has one leaf per record, so the usual case is written out instead of going through
    ``json.dumps`` (a third of the time): for two ``str``, an int and a finite float, ``json.dumps``
    with ``ensure_ascii=False`` writes exactly ``[`` + ``encode_basestring`` of each string, the
    int's and the float's ``repr``, joined by ``,`` + ``]``. Anything else (a non-finite value, a
    ``str`` subclass) takes ``canonical_json`` itself, which encodes or refuses it.
    """
    number = float(value)
    if type(owner) is str and type(record_id) is str and math.isfinite(number):
        owner_json, record_json = _json_string(owner), _json_string(record_id)
        return f"[{owner_json},{record_json},{int(visits)!r},{number!r}]".encode()
    return canonical_json([owner, record_id, int(visits), number])


def records_root(rows: Iterable[tuple[str, str, int, float]]) -> str:
    """Hex Merkle root over ``(owner, record_id, visits, value)`` rows, in dataset order."""
    return merkle_root_hex([records_leaf(*row) for row in rows])


@dataclass(frozen=True, kw_only=True)
class UsageReceipt:
    receipt_version: int = RECEIPT_VERSION
    period: str
    job_id: str
    run_id: str
    provider_id: str
    attestation_result_id: str
    assurance: str
    measurement: str
    task: str
    dataset: str
    dataset_version: int
    dataset_merkle_root: str
    owners: dict[str, OwnerUsage]
    records_root: str
    valuation: dict[str, Any]
    work_units: int
    model_digest: str
    sequence: int
    previous_receipt_digest: str | None
    issued_at: str
    compute: ComputeClaim | None = None

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
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise _malformed(f"{name} {value!r} must be a non-empty string")
        for name in ("measurement", "dataset_merkle_root", "records_root", "model_digest"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _HEX64.match(value):
                raise _malformed(f"{name} {value!r} must be 64 lowercase hex digits")
        prev = self.previous_receipt_digest
        if prev is not None and (not isinstance(prev, str) or not _HEX64.match(prev)):
            raise _malformed(f"previous_receipt_digest {prev!r} must be null or 64 lowercase hex digits")
        for name in ("dataset_version", "work_units", "sequence"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise _malformed(f"{name} {value!r} must be a non-negative integer")
        if not isinstance(self.owners, dict) or not all(
            isinstance(k, str) and k and isinstance(v, OwnerUsage) for k, v in self.owners.items()
        ):
            raise _malformed("owners must map owner ids to OwnerUsage")
        valuation = self.valuation
        if (
            not isinstance(valuation, dict)
            or not isinstance(valuation.get("method"), str)
            or not isinstance(valuation.get("params"), dict)
            or not isinstance(valuation.get("validation_digest"), str)
        ):
            raise _malformed(
                f"valuation {valuation!r} needs method (str), params (dict), validation_digest (str)"
            )
        try:
            canonical_json(valuation)
        except (TypeError, ValueError) as exc:
            raise _malformed(f"valuation has a value with no canonical JSON form ({exc})") from exc
        try:
            parse_iso(self.issued_at, field="issued_at")
        except AttestationError as exc:
            raise _malformed(exc.message) from exc
        if self.compute is not None and not isinstance(self.compute, ComputeClaim):
            raise _malformed(f"compute {self.compute!r} must be a ComputeClaim or None")

    # --- views ---------------------------------------------------------------------------------
    @property
    def issued_at_time(self) -> dt.datetime:
        return parse_iso(self.issued_at, field="issued_at")

    def predicate(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["owners"] = {owner: usage.to_dict() for owner, usage in sorted(self.owners.items())}
        data["valuation"] = dict(self.valuation)
        # Absent, not null: a receipt without a claim keeps the exact bytes it had before claims existed.
        if self.compute is None:
            del data["compute"]
        else:
            data["compute"] = self.compute.to_dict()
        return data

    def statement(self) -> dict[str, Any]:
        """The in-toto Statement v1 this receipt is signed as."""
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": f"model:{self.job_id}", "digest": {"sha256": self.model_digest}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": self.predicate(),
        }

    @classmethod
    def from_statement(cls, statement: Any) -> UsageReceipt:
        if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
            raise _malformed(f"not an in-toto Statement v1 (_type {_get(statement, '_type')!r})")
        if statement.get("predicateType") != PREDICATE_TYPE:
            raise _malformed(f"predicateType {statement.get('predicateType')!r}, expected {PREDICATE_TYPE}")
        predicate = statement.get("predicate")
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(predicate, dict) or set(predicate) - {"compute"} != names - {"compute"}:
            got = sorted(predicate) if isinstance(predicate, dict) else type(predicate).__name__
            raise _malformed(
                f"predicate has fields {got}, expected {sorted(names - {'compute'})} and optionally compute"
            )
        if "compute" in predicate and predicate["compute"] is None:
            raise _malformed("compute is null; leave the member out when there is no compute claim")
        owners = predicate["owners"]
        if not isinstance(owners, dict):
            raise _malformed(f"owners is {type(owners).__name__}, expected an object")
        try:
            parsed_owners = {owner: OwnerUsage(**usage) for owner, usage in owners.items()}
        except TypeError as exc:
            raise _malformed(f"owner usage needs rows_used, visits, value ({exc})") from exc
        fields = {**predicate, "owners": parsed_owners}
        if "compute" in predicate:
            fields["compute"] = ComputeClaim.from_dict(predicate["compute"])
        receipt = cls(**fields)
        subject = statement.get("subject")
        expected = [{"name": f"model:{receipt.job_id}", "digest": {"sha256": receipt.model_digest}}]
        if subject != expected:
            raise _malformed(f"subject {subject!r} does not name the model {expected!r}")
        return receipt

    def to_dataframe(self) -> pd.DataFrame:
        """Per-owner usage as a table (owner, rows_used, visits, value), sorted by owner."""
        import pandas as pd

        return pd.DataFrame(
            [{"owner": o, **u.to_dict()} for o, u in sorted(self.owners.items())],
            columns=["owner", "rows_used", "visits", "value"],
        )


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


# --- signing and verification -----------------------------------------------------------------


def sign_receipt(session_key: SigningKey, receipt: UsageReceipt) -> dict[str, Any]:
    """DSSE envelope over the receipt's in-toto Statement, signed by the enclave's session key."""
    return sign_envelope(session_key, USAGE_RECEIPT_TYPE, canonical_json(receipt.statement()))


def envelope_payload(envelope: Any, payload_type: str, malformed: Callable[[str], ReceiptRejected]) -> bytes:
    """The payload bytes of a DSSE envelope of ``payload_type`` (no signature check); any other type
    or a payload that is not base64 is ``malformed(message)``."""
    if not isinstance(envelope, dict) or envelope.get("payloadType") != payload_type:
        raise malformed(f"envelope payloadType {_get(envelope, 'payloadType')!r}, expected {payload_type}")
    try:
        return base64.b64decode(envelope["payload"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise malformed(f"envelope payload is not base64 ({exc})") from exc


def statement_json(payload: bytes, malformed: Callable[[str], ReceiptRejected]) -> Any:
    """The JSON statement in ``payload``, or ``malformed(message)``."""
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise malformed(f"payload is not JSON ({exc})") from exc


def _payload(envelope: Any) -> bytes:
    return envelope_payload(envelope, USAGE_RECEIPT_TYPE, _malformed)


def _statement(payload: bytes) -> UsageReceipt:
    return UsageReceipt.from_statement(statement_json(payload, _malformed))


def parse_receipt(envelope: dict[str, Any]) -> UsageReceipt:
    """The receipt inside ``envelope``, with no signature or attestation checks (for routing only)."""
    return _statement(_payload(envelope))


def receipt_digest(envelope: dict[str, Any]) -> str:
    """Hex sha256 of the signed statement bytes: what the next receipt's ``previous_receipt_digest`` holds."""
    return sha256_hex(_payload(envelope))


def verify_receipt(
    envelope: dict[str, Any], result: AttestationResult, *, now: dt.datetime | None = None
) -> UsageReceipt:
    """Check the receipt was signed by ``result``'s session key and agrees with the result.

    Raises ``ReceiptRejected`` whose ``context['reason']`` is a stable code: ``MALFORMED``,
    ``RESULT_NOT_OK``, ``SIGNATURE_INVALID``, ``RESULT_MISMATCH``, ``MEASUREMENT_MISMATCH``,
    ``ASSURANCE_MISMATCH``, ``PROVIDER_MISMATCH``, ``TASK_MISMATCH``, ``ISSUED_BEFORE_ATTESTATION``,
    ``RESULT_EXPIRED`` or ``ISSUED_IN_FUTURE``.
    """
    return verify_signed_under(
        envelope,
        result,
        payload_type=USAGE_RECEIPT_TYPE,
        payload=_payload,
        parse=_statement,
        what="usage receipt",
        now=now,
    )


class SignedBySession(Protocol):
    """What every receipt an attested session signs states about the session that signed it."""

    @property
    def job_id(self) -> str: ...
    @property
    def attestation_result_id(self) -> str: ...
    @property
    def measurement(self) -> str: ...
    @property
    def assurance(self) -> str: ...
    @property
    def provider_id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def issued_at(self) -> str: ...
    @property
    def issued_at_time(self) -> dt.datetime: ...


R = TypeVar("R", bound=SignedBySession)


def verify_signed_under(
    envelope: dict[str, Any],
    result: AttestationResult,
    *,
    payload_type: str,
    payload: Callable[[Any], bytes],
    parse: Callable[[bytes], R],
    what: str,
    now: dt.datetime | None = None,
) -> R:
    """The checks every receipt kind shares: signed by ``result``'s session key, naming that result,
    its measurement, assurance, provider and task, and issued while the result was valid.

    ``payload`` extracts the envelope's payload bytes (refusing a wrong ``payloadType`` as
    ``MALFORMED``), ``parse`` turns the verified bytes into the receipt, ``what`` names the kind in
    messages. The reasons are those listed in ``verify_receipt``.
    """
    moment = utc(now)
    if result.status != "ok":
        raise ReceiptRejected(
            f"attestation result {result.result_id} has status {result.status!r}; {what}s under it are void",
            reason="RESULT_NOT_OK",
        )
    payload(envelope)  # type and encoding first, so a wrong envelope reads as malformed
    try:
        signed = open_envelope(envelope, payload_type, result.session_key)
    except IntegrityError as exc:
        raise ReceiptRejected(
            f"{what} is not signed by session key {result.session_key.key_id} of attestation result "
            f"{result.result_id} ({exc}); the receipt was altered or signed outside the attested session",
            reason="SIGNATURE_INVALID",
        ) from exc
    receipt = parse(signed)
    checks = (
        ("attestation_result_id", "RESULT_MISMATCH", result.result_id),
        ("measurement", "MEASUREMENT_MISMATCH", result.measurement),
        ("assurance", "ASSURANCE_MISMATCH", result.assurance),
        ("provider_id", "PROVIDER_MISMATCH", result.provider_id),
        ("task", "TASK_MISMATCH", result.task),
    )
    for field, reason, expected in checks:
        claimed = getattr(receipt, field)
        if claimed != expected:
            raise ReceiptRejected(
                f"{what} for job {receipt.job_id} says {field} {claimed!r}, but attestation result "
                f"{result.result_id} says {expected!r}; settle it only under the result that admitted it",
                reason=reason,
            )
    issued = receipt.issued_at_time
    if issued < parse_iso(result.issued_at, field="issued_at"):
        raise ReceiptRejected(
            f"{what} for job {receipt.job_id} was issued at {receipt.issued_at}, before attestation "
            f"result {result.result_id} existed ({result.issued_at}); the worker's clock or receipt is wrong",
            reason="ISSUED_BEFORE_ATTESTATION",
        )
    if issued >= parse_iso(result.expires_at, field="expires_at"):
        raise ReceiptRejected(
            f"{what} for job {receipt.job_id} was issued at {receipt.issued_at}, after attestation "
            f"result {result.result_id} expired ({result.expires_at}); the worker must attest again",
            reason="RESULT_EXPIRED",
        )
    if issued > moment + CLOCK_SKEW:
        raise ReceiptRejected(
            f"{what} for job {receipt.job_id} claims issue time {receipt.issued_at}, later than now "
            f"({moment.isoformat()}) plus {CLOCK_SKEW}; fix the worker's clock",
            reason="ISSUED_IN_FUTURE",
        )
    return receipt
