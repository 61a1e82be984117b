"""Receipt intake: the one door a usage receipt passes before anyone is paid from it.

``ReceiptIntake.admit`` (one receipt) or ``admit_many`` (a batch, one transaction) checks each envelope:

1. outside any transaction, full verification: the attestation result it names is loaded with its
   verifier signature and archived evidence re-checked (once per result per call), then
   ``verify_receipt`` (signature by the bound session key, status, expiry, measurement, assurance);
   the reason codes are those of ``verify_usage_receipt``;
2. in the transaction: ``SESSION_QUARANTINED``; ``EQUIVOCATION`` (the slot (session, sequence) holds
   another digest: the session is quarantined, both digests and the second envelope kept);
   ``WRONG_PERIOD``; the held digest again is ``replayed`` (stored once, counted once);
   ``UNKNOWN_DATASET_ROOT`` / ``DATASET_ROOT_MISMATCH``; ``CHAIN_BROKEN`` (sequence 0 names a previous
   digest, or n names one other than admitted n - 1); ``CHAIN_GAP``; ``JOB_ALREADY_RECEIPTED``.

An admitted receipt may also carry *flags*: doubts that do not refuse it, because nothing is paid
from the doubted part. ``COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK``: the receipt's optional compute claim
states more device-seconds than its devices could deliver in its wall-clock time (beyond
``ComputeClaim.limit_s``'s tolerance). The receipt is admitted with ``Admission.flags`` set and the
flag stored in ``receipt_flags`` (``ReceiptIntake.flags(period)`` lists them); payment is unaffected,
because settlement pays compute by the attested ``work_units`` only (``settlement.allocation.allocate_job``:
the compute row's basis is ``work_units`` and ``settlement.period`` checks them against the job's
priced work units), never by the claim.

A session is its Ed25519 public key, not an attestation result: a worker may attest again and its
chain runs on across results and periods. A gap is rejected, not held (fix: submit in sequence
order); ``admit_many`` orders each session's receipts in a batch itself. Equivocation needs two
receipts validly signed by the session key, so nobody else can get a session quarantined.
Concurrency: another process waits on the database lock (``ExchangeDB`` retries); another
connection in this process loses at COMMIT on the primary key and its batch is decided again, so a
receipt admitted twice at once is stored once. The in-memory backend is one shared connection.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from databright.crypto import PublicKey, open_envelope, sha256_hex
from databright.db import ExchangeDB
from databright.errors import AttestationError, ConfigError, IntegrityError, ReceiptRejected, RegistryError
from databright.storage.objectstore import ObjectStore
from databright.trust.evidence import USAGE_RECEIPT_TYPE, iso, utc
from databright.trust.receipts import UsageReceipt, parse_receipt, receipt_digest, verify_receipt
from databright.trust.verifier import AttestationResult, check_archived_evidence, load_result

if TYPE_CHECKING:
    import duckdb

DDL = """
CREATE TABLE IF NOT EXISTS usage_receipts (
    session         VARCHAR NOT NULL,     -- hex Ed25519 session public key that signed it
    sequence        BIGINT NOT NULL CHECK (sequence >= 0),
    digest          VARCHAR NOT NULL,     -- sha256 of the signed statement bytes (receipt_digest)
    previous_digest VARCHAR,
    result_id       VARCHAR NOT NULL,
    job_id          VARCHAR NOT NULL,
    period          VARCHAR NOT NULL,
    dataset         VARCHAR NOT NULL,
    dataset_version INTEGER NOT NULL,
    assurance       VARCHAR NOT NULL,
    envelope        VARCHAR NOT NULL,     -- the DSSE envelope as received (JSON)
    received_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session, sequence)
);
CREATE TABLE IF NOT EXISTS quarantined_sessions (
    session             VARCHAR PRIMARY KEY,
    reason              VARCHAR NOT NULL,  -- EQUIVOCATION
    sequence            BIGINT NOT NULL,
    stored_digest       VARCHAR NOT NULL,
    conflicting_digest  VARCHAR NOT NULL,
    conflicting_envelope VARCHAR NOT NULL, -- the second signed receipt: proof the session key equivocated
    quarantined_at      TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS receipt_flags (
    session  VARCHAR NOT NULL,
    sequence BIGINT NOT NULL,
    flag     VARCHAR NOT NULL,           -- e.g. COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK
    detail   VARCHAR NOT NULL,           -- the numbers behind the flag, for the person who reads it
    PRIMARY KEY (session, sequence, flag)
);
"""

COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK = "COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK"

KnownRoots = Mapping[tuple[str, int], str] | Callable[[str, int], str | None]
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
# Only same-process connections collide at COMMIT; each retry re-reads what the winner wrote.
_WRITE_ATTEMPTS = 5
# Registering an Arrow table costs ~3 ms; a row through executemany ~1 ms: Arrow past a few rows.
_ARROW_ROWS = 4
_IDENT = ("sequence", "job_id", "period", "attestation_result_id", "assurance")


def receipt_flags(receipt: UsageReceipt) -> tuple[tuple[str, str], ...]:
    """The ``(flag, detail)`` doubts about an otherwise valid receipt; empty when there are none."""
    claim = receipt.compute
    if claim is None or not claim.exceeds_wall_clock:
        return ()
    detail = (
        f"job {receipt.job_id} claims {claim.device_seconds!r} device-seconds on {claim.devices} device(s) "
        f"in {claim.wall_clock_s!r} s of wall clock; at most {claim.limit_s:.3f} is possible (devices × wall "
        f"clock plus tolerance). The claim is not paid: compute is paid by the {receipt.work_units} "
        "attested work units only — check the worker's timers"
    )
    return ((COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK, detail),)


class _Plain:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Admission:
    """A receipt the exchange holds: ``admitted`` now, or ``replayed`` (already held; counted once)."""

    status: Literal["admitted", "replayed"]
    receipt: UsageReceipt
    digest: str
    session: str  # hex session public key
    flags: tuple[str, ...] = ()  # doubts that do not refuse it (see ``receipt_flags``)

    def to_dict(self) -> dict[str, Any]:
        ident = {k: getattr(self.receipt, k) for k in _IDENT}
        head = {"status": self.status, "digest": self.digest, "session": self.session}
        return {**head, **ident, "flags": list(self.flags)}


@dataclass(frozen=True)
class Rejection(_Plain):
    """One receipt of a batch that was refused; ``reason`` is the ``ReceiptRejected`` code."""

    index: int
    reason: str
    message: str
    session: str | None
    sequence: int | None
    digest: str | None


@dataclass(frozen=True)
class IntakeReport:
    """What ``admit_many`` did, one outcome per envelope in input order."""

    period: str
    outcomes: tuple[Admission | Rejection, ...]

    @property
    def admitted(self) -> int:
        return sum(1 for o in self.outcomes if isinstance(o, Admission) and o.status == "admitted")

    @property
    def replayed(self) -> int:
        return sum(1 for o in self.outcomes if isinstance(o, Admission) and o.status == "replayed")

    @property
    def rejections(self) -> tuple[Rejection, ...]:
        return tuple(o for o in self.outcomes if isinstance(o, Rejection))

    @property
    def flagged(self) -> int:
        """Admitted or replayed receipts that carry at least one flag."""
        return sum(1 for o in self.outcomes if isinstance(o, Admission) and o.flags)

    def to_dict(self) -> dict[str, Any]:
        counts = {
            "admitted": self.admitted,
            "replayed": self.replayed,
            "rejected": len(self.rejections),
            "flagged": self.flagged,
        }
        return {"period": self.period, **counts, "outcomes": [o.to_dict() for o in self.outcomes]}


@dataclass(frozen=True)
class SessionStatus(_Plain):
    """A session's standing; the quarantine fields are set only when ``state`` is ``quarantined``."""

    session: str
    state: Literal["unknown", "active", "quarantined"]
    receipts: int
    last_sequence: int | None
    quarantine_reason: str | None = None
    quarantined_sequence: int | None = None
    stored_digest: str | None = None
    conflicting_digest: str | None = None
    quarantined_at: str | None = None


@dataclass(frozen=True)
class ChainProblem(_Plain):
    """``kind``: TRUNCATED, CHAIN_BROKEN, REORDERED, DIGEST_MISMATCH, SIGNATURE_INVALID or ROW_MISMATCH."""

    sequence: int
    kind: str
    detail: str


@dataclass(frozen=True)
class ChainReport(_Plain):
    """A session's stored chain, re-derived from the stored envelopes; ``ok`` when nothing is wrong."""

    session: str
    receipts: int
    last_sequence: int | None
    missing: tuple[tuple[int, int], ...]  # inclusive ranges of absent sequences below the last
    problems: tuple[ChainProblem, ...]
    quarantined: bool

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def truncated(self) -> bool:
        return bool(self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ok": self.ok, "truncated": self.truncated}


@dataclass(frozen=True)
class ReceiptFlag(_Plain):
    """One stored flag on an admitted receipt."""

    session: str
    sequence: int
    digest: str
    job_id: str
    period: str
    flag: str
    detail: str


@dataclass(frozen=True)
class _Verified:
    index: int
    envelope: dict[str, Any]
    receipt: UsageReceipt
    digest: str
    session: str


def _claimed_result_id(envelope: Any) -> str:
    """The result id a receipt names, read without building the receipt (``verify_receipt`` does that)."""
    try:
        result_id = json.loads(base64.b64decode(envelope["payload"]))["predicate"]["attestation_result_id"]
    except (KeyError, TypeError, ValueError):
        result_id = None
    # Parsing in full costs as much as the signature check, so only a doubtful receipt pays it twice.
    return result_id if isinstance(result_id, str) else parse_receipt(envelope).attestation_result_id


def _session_hex(session: str | PublicKey) -> str:
    return session.hex if isinstance(session, PublicKey) else PublicKey.from_hex(session).hex


def _short(session: str) -> str:
    return PublicKey.from_hex(session).key_id


class ReceiptIntake:
    """Admits usage receipts into the exchange database, exactly once each, chain by chain."""

    def __init__(self, db: ExchangeDB, store: ObjectStore, verifier_public_key: PublicKey) -> None:
        self.db = db
        self.store = store
        self.verifier_public_key = verifier_public_key

    # --- admission -----------------------------------------------------------------------------
    def admit(
        self,
        envelope: dict[str, Any],
        *,
        period: str,
        known_roots: KnownRoots | None = None,
        now: dt.datetime | None = None,
    ) -> Admission:
        """Admit one receipt or raise ``ReceiptRejected`` (``context['reason']`` is the code)."""
        outcome = self._run([envelope], period, known_roots, now)[0]
        if isinstance(outcome, ReceiptRejected):
            raise outcome
        return outcome

    def admit_many(
        self,
        envelopes: Iterable[dict[str, Any]],
        *,
        period: str,
        known_roots: KnownRoots | None = None,
        now: dt.datetime | None = None,
    ) -> IntakeReport:
        """Admit a batch in one transaction; one bad receipt never blocks the others."""
        outcomes: list[Admission | Rejection] = []
        for index, outcome in enumerate(self._run(list(envelopes), period, known_roots, now)):
            if isinstance(outcome, ReceiptRejected):
                ctx = outcome.context
                fields = (ctx.get("session"), ctx.get("sequence"), ctx.get("digest"))
                outcomes.append(Rejection(index, ctx["reason"], outcome.message, *fields))
            else:
                outcomes.append(outcome)
        return IntakeReport(period, tuple(outcomes))

    def _run(
        self,
        envelopes: list[dict[str, Any]],
        period: str,
        known_roots: KnownRoots | None,
        now: dt.datetime | None,
    ) -> list[Admission | ReceiptRejected]:
        if not isinstance(period, str) or not _PERIOD.match(period):
            raise ConfigError(f"intake period {period!r} is not YYYY-MM; pass the period being settled")
        moment = utc(now)
        outcomes: dict[int, Admission | ReceiptRejected] = {}
        results: dict[str, AttestationResult | AttestationError] = {}
        verified: list[_Verified] = []
        for index, envelope in enumerate(envelopes):
            try:
                verified.append(self._verify(index, envelope, moment, results))
            except ReceiptRejected as exc:
                outcomes[index] = exc
        if verified:
            outcomes.update(self._decide_with_retry(verified, period, known_roots, moment))
        return [outcomes[index] for index in range(len(envelopes))]

    def _decide_with_retry(
        self, verified: list[_Verified], period: str, known_roots: KnownRoots | None, moment: dt.datetime
    ) -> dict[int, Admission | ReceiptRejected]:
        import duckdb

        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self.db.transaction() as con:
                    return _decide(con, verified, period, known_roots, moment)
            except (duckdb.TransactionException, duckdb.ConstraintException) as exc:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise RegistryError(
                        f"receipt intake kept colliding with concurrent writers ({exc}); nothing of this "
                        "batch was stored — submit it again"
                    ) from exc
        raise AssertionError("unreachable")

    def _verify(
        self,
        index: int,
        envelope: dict[str, Any],
        moment: dt.datetime,
        results: dict[str, AttestationResult | AttestationError],
    ) -> _Verified:
        result_id = _claimed_result_id(envelope)
        if result_id not in results:
            try:
                loaded = load_result(self.db, self.verifier_public_key, result_id)
                check_archived_evidence(self.store, loaded)
                results[result_id] = loaded
            except AttestationError as exc:
                results[result_id] = exc
        result = results[result_id]
        if isinstance(result, AttestationError):
            claimed = parse_receipt(envelope)  # a malformed receipt says so before its result is blamed
            raise ReceiptRejected(
                f"usage receipt for job {claimed.job_id} names attestation result {result_id}, which "
                f"cannot be trusted: {result.message}",
                reason=result.code,
            )
        receipt = verify_receipt(envelope, result, now=moment)
        return _Verified(index, envelope, receipt, receipt_digest(envelope), result.session_public_key)

    # --- inspection ----------------------------------------------------------------------------
    def flags(self, period: str) -> tuple[ReceiptFlag, ...]:
        """Every flag stored on the admitted receipts of ``period``, by session and sequence."""
        if not isinstance(period, str) or not _PERIOD.match(period):
            raise ConfigError(f"period {period!r} is not YYYY-MM; pass the period whose flags to list")
        rows = self.db.query(
            """SELECT f.session, f.sequence, u.digest, u.job_id, u.period, f.flag, f.detail
               FROM receipt_flags f JOIN usage_receipts u USING (session, sequence)
               WHERE u.period = ? ORDER BY f.session, f.sequence, f.flag""",
            [period],
        )
        return tuple(ReceiptFlag(s, int(q), d, j, p, f, t) for s, q, d, j, p, f, t in rows)

    def session_status(self, session: str | PublicKey) -> SessionStatus:
        key = _session_hex(session)
        count, last = self.db.query(
            "SELECT count(*), max(sequence) FROM usage_receipts WHERE session = ?", [key]
        )[0]
        last = None if last is None else int(last)
        found = self.db.query(
            "SELECT reason, sequence, stored_digest, conflicting_digest, quarantined_at "
            "FROM quarantined_sessions WHERE session = ?",
            [key],
        )
        if not found:
            return SessionStatus(key, "active" if count else "unknown", int(count), last)
        reason, sequence, stored, conflicting, at = found[0]
        return SessionStatus(
            key, "quarantined", int(count), last, reason, int(sequence), stored, conflicting, iso(at)
        )

    def verify_chain(self, session: str | PublicKey) -> ChainReport:
        """Walk a session's stored chain from its envelopes: truncation, broken links, edited rows."""
        key = _session_hex(session)
        rows = self.db.query(
            "SELECT sequence, digest, previous_digest, envelope FROM usage_receipts WHERE session = ? "
            "ORDER BY sequence",
            [key],
        )
        quarantined = bool(self.db.query("SELECT 1 FROM quarantined_sessions WHERE session = ?", [key]))
        digests = {int(r[0]): r[1] for r in rows}
        by_digest = {d: q for q, d in digests.items()}
        problems: list[ChainProblem] = []
        for sequence, digest, previous, text in rows:
            sequence = int(sequence)
            problem = _check_row(PublicKey.from_hex(key), sequence, digest, previous, text)
            if problem is None and sequence == 0 and previous is not None:
                problem = "CHAIN_BROKEN", f"sequence 0 names previous receipt {previous}"
            elif problem is None and sequence > 0 and sequence - 1 not in digests:
                problem = "TRUNCATED", f"it refers to receipt {sequence - 1} ({previous}), which is missing"
            elif problem is None and sequence > 0 and previous != digests[sequence - 1]:
                other = by_digest.get(previous or "")
                kind, after = ("CHAIN_BROKEN", "") if other is None else ("REORDERED", f" (receipt {other})")
                problem = (
                    kind,
                    f"it follows {previous}{after}, not receipt {sequence - 1} ({digests[sequence - 1]})",
                )
            if problem is not None:
                problems.append(ChainProblem(sequence, *problem))
        missing, expected = [], 0
        for sequence in sorted(digests):
            if sequence > expected:
                missing.append((expected, sequence - 1))
            expected = sequence + 1
        last = max(digests) if digests else None
        return ChainReport(key, len(rows), last, tuple(missing), tuple(problems), quarantined)


def _check_row(
    public_key: PublicKey, sequence: int, digest: str, previous: str | None, text: str
) -> tuple[str, str] | None:
    """Why a stored row disagrees with its own signed envelope, or ``None``."""
    try:
        envelope = json.loads(text)
        payload = open_envelope(envelope, USAGE_RECEIPT_TYPE, public_key)
        receipt = parse_receipt(envelope)
    except (ValueError, TypeError, AttributeError, IntegrityError, ReceiptRejected) as exc:
        return "SIGNATURE_INVALID", f"the stored envelope is no receipt signed by the session key ({exc})"
    if sha256_hex(payload) != digest:
        return "DIGEST_MISMATCH", f"stored digest {digest} is not the digest of the stored envelope"
    if (receipt.sequence, receipt.previous_receipt_digest) != (sequence, previous):
        signed = (receipt.sequence, receipt.previous_receipt_digest)
        return "ROW_MISMATCH", f"the row says {(sequence, previous)}, the signed receipt says {signed}"
    return None


# --- the decision, inside one transaction ---------------------------------------------------------


@dataclass
class _State:
    """What the database holds that a batch's decisions need, updated as the batch is admitted."""

    slots: dict[tuple[str, int], str]  # (session, sequence) -> digest
    jobs: dict[str, str]  # job_id -> digest
    quarantined: set[str]
    roots: dict[tuple[str, int], str | None]


def _load_state(
    con: duckdb.DuckDBPyConnection, items: Sequence[_Verified], known_roots: KnownRoots | None
) -> _State:
    keys = [(i.session, q) for i in items for q in (i.receipt.sequence, i.receipt.sequence - 1) if q >= 0]
    slots = con.execute(
        """SELECT u.session, u.sequence, u.digest FROM usage_receipts u
           JOIN (SELECT unnest(?::VARCHAR[]) AS s, unnest(?::BIGINT[]) AS q) k
           ON u.session = k.s AND u.sequence = k.q""",
        [[s for s, _ in keys], [q for _, q in keys]],
    ).fetchall()
    jobs = con.execute(
        "SELECT job_id, digest FROM usage_receipts WHERE job_id IN (SELECT unnest(?::VARCHAR[]))",
        [sorted({i.receipt.job_id for i in items})],
    ).fetchall()
    quarantined = con.execute(
        "SELECT session FROM quarantined_sessions WHERE session IN (SELECT unnest(?::VARCHAR[]))",
        [sorted({i.session for i in items})],
    ).fetchall()
    wanted = {(i.receipt.dataset, i.receipt.dataset_version) for i in items}
    if known_roots is None:
        registered = con.execute(
            "SELECT dataset, version, merkle_root FROM dataset_versions "
            "WHERE dataset IN (SELECT unnest(?::VARCHAR[]))",
            [sorted({d for d, _ in wanted})],
        ).fetchall()
        by_key = {(d, int(v)): root for d, v, root in registered}
        roots = {k: by_key.get(k) for k in wanted}
    elif isinstance(known_roots, Mapping):
        roots = {k: known_roots.get(k) for k in wanted}
    else:
        roots = {k: known_roots(*k) for k in wanted}
    return _State({(s, int(q)): d for s, q, d in slots}, dict(jobs), {r[0] for r in quarantined}, roots)


def _decide(
    con: duckdb.DuckDBPyConnection,
    items: Sequence[_Verified],
    period: str,
    known_roots: KnownRoots | None,
    moment: dt.datetime,
) -> dict[int, Admission | ReceiptRejected]:
    state = _load_state(con, items, known_roots)
    out: dict[int, Admission | ReceiptRejected] = {}
    new_rows: list[dict[str, Any]] = []
    new_flags: list[list[Any]] = []
    # Each session in sequence order, so a batch may list a session's receipts in any order.
    for item in sorted(items, key=lambda i: (i.session, i.receipt.sequence)):
        r, digest = item.receipt, item.digest
        stored = state.slots.get((item.session, r.sequence))
        verdict = _verdict(item, stored, period, state)
        if verdict is None:
            flags = receipt_flags(r)
            status: Literal["admitted", "replayed"] = "replayed" if stored else "admitted"
            out[item.index] = Admission(status, r, digest, item.session, tuple(f for f, _ in flags))
            if stored is None:
                state.slots[(item.session, r.sequence)] = state.jobs[r.job_id] = digest
                new_rows.append(_row(item, moment))
                new_flags += [[item.session, r.sequence, flag, detail] for flag, detail in flags]
            continue
        out[item.index] = _reject(item, *verdict)
        if verdict[0] == "EQUIVOCATION":
            state.quarantined.add(item.session)
            con.execute(
                "INSERT INTO quarantined_sessions VALUES (?, 'EQUIVOCATION', ?, ?, ?, ?, ?)",
                [item.session, r.sequence, stored, digest, json.dumps(item.envelope, sort_keys=True), moment],
            )
    if new_rows:
        _insert(con, new_rows)
    if new_flags:
        con.executemany("INSERT INTO receipt_flags VALUES (?, ?, ?, ?)", new_flags)
    return out


def _verdict(item: _Verified, stored: str | None, period: str, state: _State) -> tuple[str, str] | None:
    """The reason and message that refuse ``item``, or ``None`` to admit it (or replay it if stored)."""
    r, seq, previous = item.receipt, item.receipt.sequence, item.receipt.previous_receipt_digest
    if item.session in state.quarantined:
        return "SESSION_QUARANTINED", (
            "the session is quarantined for equivocation and none of its receipts are admitted; "
            "investigate the provider, then run its jobs again in a new attested session"
        )
    if stored is not None and stored != item.digest:
        return "EQUIVOCATION", (
            f"the session key signed two different receipts at this sequence (held {stored}, this one "
            f"{item.digest}); the session is now quarantined and its later receipts are refused — "
            f"investigate provider {r.provider_id}"
        )
    if r.period != period:
        return "WRONG_PERIOD", (
            f"it is for period {r.period}, but this intake admits period {period}; submit it to the "
            f"{r.period} intake"
        )
    if stored is not None:
        return None
    root = state.roots.get((r.dataset, r.dataset_version))
    if root is None:
        return "UNKNOWN_DATASET_ROOT", (
            f"dataset {r.dataset!r} v{r.dataset_version} is not a registered dataset version; train only "
            "on registered versions"
        )
    if root != r.dataset_merkle_root:
        return "DATASET_ROOT_MISMATCH", (
            f"it claims Merkle root {r.dataset_merkle_root} for {r.dataset!r} v{r.dataset_version}, but "
            f"the registry holds {root}; the worker read other data — run the job on the registered version"
        )
    if seq == 0 and previous is not None:
        return "CHAIN_BROKEN", (
            f"sequence 0 opens a session's chain, yet it names previous receipt {previous}; "
            "the worker must start each session's chain with previous_receipt_digest null"
        )
    before = state.slots.get((item.session, seq - 1)) if seq > 0 else None
    if seq > 0 and before is None:
        return "CHAIN_GAP", (
            f"receipt {seq - 1} of this session has not been admitted; submit receipts in sequence "
            f"order ({seq - 1} first)"
        )
    if seq > 0 and previous != before:
        return "CHAIN_BROKEN", (
            f"it names previous receipt {previous}, but the admitted receipt {seq - 1} has digest "
            f"{before}; the chain was reordered or forked — resubmit the session's receipts as signed"
        )
    held = state.jobs.get(r.job_id)
    if held is not None:
        return "JOB_ALREADY_RECEIPTED", (
            f"job {r.job_id} is already covered by receipt {held}; a job is paid from one receipt only"
        )
    return None


def _reject(item: _Verified, reason: str, message: str) -> ReceiptRejected:
    r = item.receipt
    return ReceiptRejected(
        f"usage receipt for job {r.job_id} (session {_short(item.session)}, sequence {r.sequence}): "
        + message,
        reason=reason,
        session=item.session,
        sequence=r.sequence,
        digest=item.digest,
    )


def _row(item: _Verified, moment: dt.datetime) -> dict[str, Any]:
    r = item.receipt
    return {
        "session": item.session,
        "sequence": r.sequence,
        "digest": item.digest,
        "previous_digest": r.previous_receipt_digest,
        "result_id": r.attestation_result_id,
        "job_id": r.job_id,
        "period": r.period,
        "dataset": r.dataset,
        "dataset_version": r.dataset_version,
        "assurance": r.assurance,
        "envelope": json.dumps(item.envelope, sort_keys=True),
        "received_at": moment,
    }


def _insert(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    names = ", ".join(rows[0])
    if len(rows) < _ARROW_ROWS:
        marks = ", ".join("?" for _ in rows[0])
        con.executemany(
            f"INSERT INTO usage_receipts ({names}) VALUES ({marks})", [list(r.values()) for r in rows]
        )
        return
    import pyarrow as pa

    con.register("incoming_receipts", pa.Table.from_pylist(rows))
    try:
        con.execute(f"INSERT INTO usage_receipts ({names}) SELECT {names} FROM incoming_receipts")
    finally:
        con.unregister("incoming_receipts")
