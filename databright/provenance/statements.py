"""Stage provenance statements: what one stage read and wrote, signed by the exchange's stage key.

A statement is an in-toto Statement v1 whose ``subject`` lists the artifacts the stage produced and
whose predicate (``PREDICATE_TYPE``) names the ``stage``, the ``period``, the ``inputs`` it consumed,
the ``parameters`` that shaped the outputs (policy and contract digests, seeds, ids), the
``assurance`` it rests on and when it was ``produced_at``. Every artifact is ``{name, digest:
{sha256}}``; a Merkle root is written as the sha256 digest it is (RFC 6962 over sha256).

It travels in a DSSE envelope (``PAYLOAD_TYPE``) signed by the stage key ``keys/provenance.pem``, a
key of its own, so neither the attestation verifier's key nor an enclave session key can vouch
for a stage and the stage key can vouch for nothing else.

``ProvenanceLog.record`` is idempotent by content: the *binding digest* is the digest of the
statement without ``produced_at``, and a statement whose binding is already recorded is not
signed again, so re-running a stage (a retried ingest, a re-settled period) never leaves a second,
different statement. The envelope is stored content-addressed (``provenance/<period>/<stage>/
<statement digest>.dsse.json``) and indexed in ``provenance_statements`` with one row per subject
in ``provenance_subjects``, which is how the audit finds the producer of an artifact.

Assurance: ``hardware`` or ``simulated`` for a stage that rests on attested workers (``simulated``
as soon as any attestation behind it is simulated), ``none`` for a stage no attestation is
involved in (ingest and withdrawal run on the exchange itself).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.crypto import PublicKey, SigningKey, canonical_json, digest_json, open_envelope, sha256_hex
from databright.crypto import sign_envelope as _sign
from databright.errors import ConfigError, IntegrityError, RegistryError

if TYPE_CHECKING:
    import duckdb

    from databright.config import Settings
    from databright.db import ExchangeDB
    from databright.storage.objectstore import ObjectStore

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://databright.dev/stage-provenance/v1"
PAYLOAD_TYPE = "application/vnd.databright.stage-provenance.v1+json"
STAGE_KEY_FILE = "provenance.pem"
# In the audit's walk order: from posted transfers back to contributed files.
STAGES = ("settle", "value", "train", "withdraw", "ingest")
ASSURANCES = ("hardware", "simulated", "none")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

DDL = """
CREATE TABLE IF NOT EXISTS provenance_statements (
    binding_digest   VARCHAR PRIMARY KEY,  -- digest of the statement without produced_at
    statement_digest VARCHAR NOT NULL,     -- sha256 of the signed statement bytes
    stage            VARCHAR NOT NULL,
    period           VARCHAR NOT NULL,
    assurance        VARCHAR NOT NULL,
    envelope_key     VARCHAR NOT NULL,     -- the DSSE envelope in the object store
    key_id           VARCHAR NOT NULL,     -- the stage key that signed it
    produced_at      TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS provenance_subjects (
    binding_digest VARCHAR NOT NULL,
    name           VARCHAR NOT NULL,
    digest         VARCHAR NOT NULL,       -- hex sha256
    PRIMARY KEY (binding_digest, name)
);
"""


def load_stage_key(keys_dir: Path) -> SigningKey:
    """The exchange's stage-provenance signing key, ``keys_dir/provenance.pem`` (created on first use)."""
    return SigningKey.load_or_create(keys_dir / STAGE_KEY_FILE)


def stage_public_key(keys_dir: Path) -> PublicKey:
    """The public half of an existing stage key; an audit never makes a new one."""
    path = keys_dir / STAGE_KEY_FILE
    if not path.is_file():
        raise ConfigError(
            f"no stage provenance key at {path}; the statements were signed by the key of the home that "
            "ran the stages — point DATABRIGHT_HOME at that home (or restore its keys/ folder)"
        )
    return SigningKey.load_or_create(path).public_key


def _malformed(message: str) -> IntegrityError:
    return IntegrityError(f"malformed provenance statement: {message}")


@dataclass(frozen=True, order=True)
class Artifact:
    """One input or output of a stage: a name the exchange chose and the sha256 of its bytes."""

    name: str
    digest: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _malformed(f"artifact name {self.name!r} must be a non-empty string")
        if not isinstance(self.digest, str) or not _HEX64.match(self.digest):
            raise _malformed(f"artifact {self.name!r} digest {self.digest!r} is not 64 lowercase hex digits")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": self.digest}}

    @classmethod
    def from_dict(cls, data: Any) -> Artifact:
        digest = data.get("digest") if isinstance(data, dict) else None
        if not isinstance(data, dict) or set(data) != {"name", "digest"} or not isinstance(digest, dict):
            raise _malformed(f"artifact {data!r} must be {{name, digest: {{sha256}}}}")
        if set(digest) != {"sha256"}:
            raise _malformed(f"artifact {data.get('name')!r} has digests {sorted(digest)}, expected sha256")
        return cls(data["name"], digest["sha256"])


def _artifacts(items: Any, what: str) -> tuple[Artifact, ...]:
    out = tuple(sorted(items))
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise _malformed(f"{what} name {twice[0]!r} appears twice; each artifact is listed once")
    return out


@dataclass(frozen=True)
class StageStatement:
    """The content of one stage's statement; ``statement()`` is the in-toto form that is signed."""

    stage: str
    period: str
    subjects: tuple[Artifact, ...]
    inputs: tuple[Artifact, ...]
    parameters: dict[str, Any] = field(hash=False)
    assurance: str
    produced_at: str = ""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise _malformed(f"stage {self.stage!r} is not one of {STAGES}")
        if not isinstance(self.period, str) or not _PERIOD.match(self.period):
            raise _malformed(f"period {self.period!r} is not YYYY-MM")
        if self.assurance not in ASSURANCES:
            raise _malformed(f"assurance {self.assurance!r} is not one of {ASSURANCES}")
        if not self.subjects:
            raise _malformed(f"a {self.stage} statement names no output; it must bind at least one subject")
        object.__setattr__(self, "subjects", _artifacts(self.subjects, "subject"))
        object.__setattr__(self, "inputs", _artifacts(self.inputs, "input"))
        try:
            canonical_json(self.parameters)
        except (TypeError, ValueError) as exc:
            raise _malformed(f"parameters have no canonical JSON form ({exc})") from exc
        if not self.produced_at:
            object.__setattr__(
                self, "produced_at", dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
            )
        try:
            moment = dt.datetime.fromisoformat(self.produced_at)
        except (TypeError, ValueError) as exc:
            raise _malformed(f"produced_at {self.produced_at!r} is not an ISO 8601 time") from exc
        if moment.tzinfo is None:
            raise _malformed(f"produced_at {self.produced_at!r} has no time zone; write it in UTC")

    def _predicate(self, *, with_time: bool) -> dict[str, Any]:
        predicate = {
            "stage": self.stage,
            "period": self.period,
            "inputs": [a.to_dict() for a in self.inputs],
            "parameters": self.parameters,
            "assurance": self.assurance,
        }
        if with_time:
            predicate["produced_at"] = self.produced_at
        return predicate

    def statement(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [a.to_dict() for a in self.subjects],
            "predicateType": PREDICATE_TYPE,
            "predicate": self._predicate(with_time=True),
        }

    @property
    def binding_digest(self) -> str:
        """What makes two statements the same: everything but ``produced_at``."""
        return digest_json(
            {"subject": [a.to_dict() for a in self.subjects], "predicate": self._predicate(with_time=False)}
        )

    def subject(self, name: str) -> Artifact | None:
        return next((a for a in self.subjects if a.name == name), None)

    def input(self, name: str) -> Artifact | None:
        return next((a for a in self.inputs if a.name == name), None)

    @classmethod
    def from_statement(cls, data: Any) -> StageStatement:
        if not isinstance(data, dict) or data.get("_type") != STATEMENT_TYPE:
            raise _malformed("not an in-toto Statement v1")
        if data.get("predicateType") != PREDICATE_TYPE:
            raise _malformed(f"predicateType {data.get('predicateType')!r}, expected {PREDICATE_TYPE}")
        predicate = data.get("predicate")
        expected = {"stage", "period", "inputs", "parameters", "assurance", "produced_at"}
        if not isinstance(predicate, dict) or set(predicate) != expected:
            got = sorted(predicate) if isinstance(predicate, dict) else type(predicate).__name__
            raise _malformed(f"predicate has fields {got}, expected {sorted(expected)}")
        if not isinstance(data.get("subject"), list) or not isinstance(predicate["inputs"], list):
            raise _malformed("subject and predicate.inputs must be lists of artifacts")
        if not isinstance(predicate["parameters"], dict) or not predicate["produced_at"]:
            raise _malformed("parameters must be an object and produced_at a time string")
        return cls(
            stage=predicate["stage"],
            period=predicate["period"],
            subjects=tuple(Artifact.from_dict(a) for a in data["subject"]),
            inputs=tuple(Artifact.from_dict(a) for a in predicate["inputs"]),
            parameters=predicate["parameters"],
            assurance=predicate["assurance"],
            produced_at=predicate["produced_at"],
        )

    def to_dict(self) -> dict[str, Any]:
        return self.statement()


def sign_statement(key: SigningKey, statement: StageStatement) -> dict[str, Any]:
    return _sign(key, PAYLOAD_TYPE, canonical_json(statement.statement()))


def open_statement(envelope: Any, public_key: PublicKey) -> tuple[StageStatement, str]:
    """Check the envelope's signature by the stage key; return the statement and its digest."""
    if not isinstance(envelope, dict):
        raise _malformed(f"envelope is a {type(envelope).__name__}, not a DSSE object")
    payload = open_envelope(envelope, PAYLOAD_TYPE, public_key)
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise _malformed(f"payload is not JSON ({exc})") from exc
    statement = StageStatement.from_statement(data)
    if canonical_json(statement.statement()) != payload:
        raise _malformed("payload is not the canonical JSON of its statement")
    return statement, sha256_hex(payload)


@dataclass(frozen=True)
class IndexedStatement:
    """One row of the index: where a statement is and what it claims to produce."""

    binding_digest: str
    statement_digest: str
    stage: str
    period: str
    assurance: str
    envelope_key: str
    key_id: str
    produced_at: dt.datetime
    subjects: tuple[Artifact, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "binding_digest": self.binding_digest,
            "statement_digest": self.statement_digest,
            "stage": self.stage,
            "period": self.period,
            "assurance": self.assurance,
            "envelope_key": self.envelope_key,
            "key_id": self.key_id,
            "produced_at": self.produced_at.isoformat(),
            "subjects": [a.to_dict() for a in self.subjects],
        }


@dataclass(frozen=True)
class RecordedStatement:
    """What ``ProvenanceLog.record`` returns; ``created`` is False when the content was already there."""

    statement: StageStatement
    statement_digest: str
    envelope_key: str
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.statement.stage,
            "period": self.statement.period,
            "statement_digest": self.statement_digest,
            "envelope_key": self.envelope_key,
            "created": self.created,
            "statement": self.statement.statement(),
        }


_INDEX_COLUMNS = (
    "binding_digest, statement_digest, stage, period, assurance, envelope_key, key_id, produced_at"
)


class ProvenanceLog:
    """Records stage statements (signed, stored, indexed) and finds them again."""

    def __init__(self, db: ExchangeDB, store: ObjectStore, key: SigningKey | None = None) -> None:
        self.db = db
        self.store = store
        self.key = key  # None: a log that only reads (the audit), checking against a given public key

    def _signing_key(self) -> SigningKey:
        if self.key is None:
            raise ConfigError(
                "this ProvenanceLog was opened without the stage key, so it can only read statements; open "
                "it with ProvenanceLog.from_settings(settings) to record them"
            )
        return self.key

    @classmethod
    def from_settings(cls, settings: Settings, db: ExchangeDB | None = None) -> ProvenanceLog:
        return cls(db or settings.exchange_db(), settings.object_store(), load_stage_key(settings.keys_dir))

    def record(self, statement: StageStatement) -> RecordedStatement:
        """Sign, store and index ``statement``, unless a statement with its content already exists."""
        import duckdb

        signer = self._signing_key()
        existing = self._recorded(statement.binding_digest)
        if existing is not None:
            return existing
        envelope = sign_statement(signer, statement)
        digest = sha256_hex(canonical_json(statement.statement()))
        envelope_key = f"provenance/{statement.period}/{statement.stage}/{digest}.dsse.json"
        # Stored before it is indexed: an index row never points at a missing envelope, and an
        # envelope whose index insert failed is an unreferenced object the next attempt overwrites.
        self.store.put_bytes(envelope_key, canonical_json(envelope))
        try:
            with self.db.transaction() as con:
                con.execute(
                    f"INSERT INTO provenance_statements ({_INDEX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        statement.binding_digest,
                        digest,
                        statement.stage,
                        statement.period,
                        statement.assurance,
                        envelope_key,
                        signer.public_key.key_id,
                        dt.datetime.fromisoformat(statement.produced_at),
                    ],
                )
                con.executemany(
                    "INSERT INTO provenance_subjects VALUES (?, ?, ?)",
                    [[statement.binding_digest, a.name, a.digest] for a in statement.subjects],
                )
        except duckdb.ConstraintException:
            # Another process recorded the same content first; its statement is the one that counts.
            again = self._recorded(statement.binding_digest)
            if again is None:
                raise
            return again
        except duckdb.Error as exc:
            raise RegistryError(
                f"the exchange database refused the {statement.stage} statement of {statement.period}: "
                f"{exc}; run the stage again (recording is idempotent)"
            ) from exc
        return RecordedStatement(statement, digest, envelope_key, created=True)

    def _recorded(self, binding_digest: str) -> RecordedStatement | None:
        rows = self.indexed(binding_digest=binding_digest)
        if not rows:
            return None
        row = rows[0]
        statement, digest = self.load(row)
        return RecordedStatement(statement, digest, row.envelope_key, created=False)

    def indexed(
        self,
        *,
        period: str | None = None,
        stage: str | None = None,
        binding_digest: str | None = None,
    ) -> list[IndexedStatement]:
        """Index rows matching the filters, in walk order (``STAGES``), then by time."""
        with self.db.connect() as con:
            return indexed_statements(con, period=period, stage=stage, binding_digest=binding_digest)

    def producers(self, name: str) -> list[IndexedStatement]:
        """Every indexed statement with a subject called ``name`` (whatever its digest)."""
        with self.db.connect() as con:
            found = con.execute(
                "SELECT DISTINCT binding_digest FROM provenance_subjects WHERE name = ?", [name]
            ).fetchall()
            return [r for (b,) in found for r in indexed_statements(con, binding_digest=b)]

    def load(self, row: IndexedStatement, public_key: PublicKey | None = None) -> tuple[StageStatement, str]:
        """The envelope behind ``row``, signature checked; ``(statement, statement digest)``."""
        try:
            envelope = json.loads(self.store.get_bytes(row.envelope_key))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _malformed(f"{row.envelope_key} is not JSON ({exc})") from exc
        return open_statement(envelope, public_key or self._signing_key().public_key)


def indexed_statements(
    con: duckdb.DuckDBPyConnection,
    *,
    period: str | None = None,
    stage: str | None = None,
    binding_digest: str | None = None,
) -> list[IndexedStatement]:
    sql, params = f"SELECT {_INDEX_COLUMNS} FROM provenance_statements WHERE 1 = 1", []
    for column, value in (("period", period), ("stage", stage), ("binding_digest", binding_digest)):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    rows = con.execute(sql, params).fetchall()
    subjects: dict[str, list[Artifact]] = {}
    if rows:
        found = con.execute(
            "SELECT binding_digest, name, digest FROM provenance_subjects WHERE binding_digest IN "
            f"({', '.join('?' * len(rows))})",
            [r[0] for r in rows],
        ).fetchall()
        for binding, name, digest in found:
            subjects.setdefault(binding, []).append(Artifact(name, digest))
    out = [
        IndexedStatement(
            binding_digest=r[0],
            statement_digest=r[1],
            stage=r[2],
            period=r[3],
            assurance=r[4],
            envelope_key=r[5],
            key_id=r[6],
            produced_at=r[7],
            subjects=tuple(sorted(subjects.get(r[0], []))),
        )
        for r in rows
    ]
    order = {stage: number for number, stage in enumerate(STAGES)}
    return sorted(out, key=lambda s: (order.get(s.stage, len(STAGES)), s.produced_at, s.binding_digest))
