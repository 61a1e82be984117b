"""The audit chain: a hash-chained log of every ledger and settlement write, with signed checkpoints.

Every write that moves or decides money appends one row to ``audit_log`` *inside the transaction
that makes the write*, so a crash leaves both or neither: ``Ledger.post`` logs each batch of new
transfers (``kind = "transfers"``, subject the batch's ``created_at``: count, total and a digest over
every column of its rows), the settlement store logs each change of a period's row
(``"settlement-state"``, the whole row) and each replacement of its allocations (``"allocations"``,
count, total and ``allocation_root`` of the rows). ``body`` is the canonical JSON of that content;
``databright.ledger.audit_rows`` defines the bodies and computes them from the tables in bulk.

Entry hashes (hex in the table, raw bytes below), with ``lp(x) = u64be(len(x)) ‖ x`` over UTF-8::

    entry_hash(seq) = SHA-256("databright/audit-log/v2" ‖ 0x00 ‖ prev_hash ‖ lp(kind) ‖ lp(subject)
                              ‖ lp(body) ‖ u64be(seq))
    prev_hash(1) = 32 zero bytes;  prev_hash(seq) = entry_hash(seq - 1);  seq is dense from 1

A chain alone cannot catch a rewrite that recomputes every later hash, so ``checkpoint`` signs the
RFC 6962 Merkle root over the entry hashes (leaf ``i`` = the 32 bytes of ``entry_hash(i + 1)``),
the tree size, the last entry hash and a timestamp in a DSSE envelope (``CHECKPOINT_PAYLOAD_TYPE``)
by the audit key ``keys/audit.pem`` (its own, like the stage key), exported to ``audit/checkpoints/
<size>.json`` and ``latest.json``; it never signs a log that contradicts the last checkpoint.
``verify_audit_chain`` recomputes the chain, matches every row with its entry, checks every checkpoint.
v2 (this format) logs a batch of transfers as one entry; v1 logged one entry per transfer.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.crypto import (
    PublicKey,
    SigningKey,
    canonical_json,
    merkle_root_digests,
    open_envelope,
    sha256_hex,
    sign_envelope,
)
from databright.errors import ConfigError, DatabrightError, IntegrityError
from databright.ledger.audit_rows import (
    allocations_body,
    batch_subject,
    settlement_body,
    transfer_batch_bodies,
    transfer_batch_body,
)

if TYPE_CHECKING:
    import duckdb

    from databright.db import ExchangeDB
    from databright.storage.objectstore import ObjectStore

DDL = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq        BIGINT PRIMARY KEY,        -- dense, from 1
    kind       VARCHAR NOT NULL,          -- transfers | settlement-state | allocations
    subject    VARCHAR NOT NULL,          -- the transfer batch's created_at, or the settlement's period
    body       VARCHAR NOT NULL,          -- canonical JSON of what was written
    prev_hash  VARCHAR NOT NULL,          -- hex; 64 zeros before seq 1
    entry_hash VARCHAR NOT NULL           -- hex sha256, see the module docstring
);
"""

KINDS = ("transfers", "settlement-state", "allocations")
GENESIS = "0" * 64
DOMAIN = b"databright/audit-log/v2\x00"
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.databright.audit-checkpoint.v1+json"
AUDIT_KEY_FILE = "audit.pem"
CHECKPOINTS = "audit/checkpoints/"
LATEST = CHECKPOINTS + "latest.json"
LOG_NAME = "databright-audit-log"
_ENTRY_COLUMNS = "seq, kind, subject, body, prev_hash, entry_hash"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_PROBLEMS = 50  # a report lists this many problems, then says how many more

# --- the chain ------------------------------------------------------------------------------------


def _canonical(body: dict[str, Any]) -> str:
    # canonical_json's bytes without its Python pre-walk (allow_nan=False refuses NaN all the same).
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _lp(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(8, "big") + data


def entry_hash(seq: int, kind: str, subject: str, body: str, prev_hash: str) -> str:
    """The hex entry hash of one row, exactly as the module docstring defines it."""
    return sha256_hex(
        DOMAIN + bytes.fromhex(prev_hash) + _lp(kind) + _lp(subject) + _lp(body) + seq.to_bytes(8, "big")
    )


def append(con: duckdb.DuckDBPyConnection, kind: str, entries: Sequence[tuple[str, dict[str, Any]]]) -> int:
    """Append ``(subject, body)`` entries of one kind inside the caller's transaction; return the last seq.

    Two transactions that append at once both claim the next seq; the primary key lets only one
    commit, which is what keeps the chain a single line.
    """
    if kind not in KINDS:
        raise IntegrityError(f"audit entry kind {kind!r} is unknown; kinds are {list(KINDS)}")
    last = con.execute("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchall()
    seq, prev = (int(last[0][0]), str(last[0][1])) if last else (0, GENESIS)
    rows = []
    for subject, body in entries:
        seq += 1
        text = _canonical(body)
        rows.append((seq, kind, subject, text, prev, entry_hash(seq, kind, subject, text, prev)))
        prev = rows[-1][-1]
    if rows:
        # One statement over column lists: far faster than executemany for a period's payouts.
        con.execute(
            "INSERT INTO audit_log SELECT * FROM (SELECT unnest($1::BIGINT[]), unnest($2::VARCHAR[]), "
            "unnest($3::VARCHAR[]), unnest($4::VARCHAR[]), unnest($5::VARCHAR[]), unnest($6::VARCHAR[]))",
            [list(column) for column in zip(*rows, strict=True)],
        )
    return seq


# --- what each kind of entry records --------------------------------------------------------------


def record_transfers(con: duckdb.DuckDBPyConnection, created_at: dt.datetime) -> None:
    """Log the batch of transfers just inserted with ``created_at`` (unique per batch) as one entry."""
    append(con, "transfers", [(batch_subject(created_at), transfer_batch_body(con, created_at))])


def _record_if_changed(con: duckdb.DuckDBPyConnection, kind: str, subject: str, body: dict[str, Any]) -> None:
    # A write that left the row as its last entry says (a resumed claim) adds nothing to the story.
    last = con.execute(
        "SELECT body FROM audit_log WHERE kind = ? AND subject = ? ORDER BY seq DESC LIMIT 1", [kind, subject]
    ).fetchall()
    if not last or last[0][0] != _canonical(body):
        append(con, kind, [(subject, body)])


def record_settlement(con: duckdb.DuckDBPyConnection, period: str) -> None:
    """Log the period's settlements row as it now stands, if it differs from its last entry."""
    _record_if_changed(con, "settlement-state", period, settlement_body(con, period) or {})


def record_allocations(con: duckdb.DuckDBPyConnection, period: str) -> None:
    """Log the period's allocation rows (count, total, root) as they now stand."""
    _record_if_changed(con, "allocations", period, allocations_body(con, period))


# --- keys and checkpoints -------------------------------------------------------------------------


def load_audit_key(keys_dir: Path) -> SigningKey:
    """The exchange's checkpoint signing key, ``keys_dir/audit.pem`` (created on first use)."""
    return SigningKey.load_or_create(keys_dir / AUDIT_KEY_FILE)


def audit_public_key(keys_dir: Path) -> PublicKey:
    """The public half of an existing audit key; verifying never makes a new one."""
    path = keys_dir / AUDIT_KEY_FILE
    if not path.is_file():
        raise ConfigError(
            f"no audit checkpoint key at {path}; checkpoints were signed by the key of the home that "
            "settled — point DATABRIGHT_HOME at that home (or restore its keys/ folder)"
        )
    return SigningKey.load_or_create(path).public_key


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the log's first ``tree_size`` entries."""

    tree_size: int
    root_hash: str
    last_entry_hash: str
    timestamp: str
    key_id: str
    envelope: dict[str, Any] = field(compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{CHECKPOINTS}{self.tree_size}.json"

    @classmethod
    def open(cls, envelope: Any, public_key: PublicKey, where: str) -> Checkpoint:
        """Check the envelope's signature by ``public_key`` and the statement's shape."""
        try:
            data = json.loads(open_envelope(envelope, CHECKPOINT_PAYLOAD_TYPE, public_key))
            size, root, last = data["tree_size"], data["root_hash"], data["last_entry_hash"]
            if data["log"] != LOG_NAME or type(size) is not int or size < 0:
                raise ValueError(f"it is not a checkpoint of {LOG_NAME} with a tree size")
            if not (_HEX64.match(root) and _HEX64.match(last)):
                raise ValueError("its root_hash and last_entry_hash are not 64 hex digits")
        # JSON and Unicode decoding errors are ValueErrors; a missing field or wrong type the others.
        except (IntegrityError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"checkpoint {where} is unusable: {exc}") from exc
        return cls(size, root, last, str(data["timestamp"]), public_key.key_id, envelope)


def _root(hashes: Sequence[str]) -> str:
    return merkle_root_digests(bytes.fromhex("".join(hashes))).hex()


def _read_checkpoint(store: ObjectStore, key: str, public_key: PublicKey) -> Checkpoint | None:
    if not store.exists(key):
        return None
    try:
        envelope = json.loads(store.get_bytes(key))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"checkpoint {key} is not JSON: {exc}") from exc
    return Checkpoint.open(envelope, public_key, key)


def checkpoint(db: ExchangeDB, store: ObjectStore, signing_key: SigningKey) -> Checkpoint:
    """Sign the log as it stands and export it; the latest checkpoint again if nothing was appended.

    Refuses (``IntegrityError``, nothing exported) when the log's prefix no longer has the root of the
    previous checkpoint or its new entries do not chain from it: signing would launder a rewrite.
    """
    with db.connect() as con:
        hashes = [r[0] for r in con.execute("SELECT entry_hash FROM audit_log ORDER BY seq").fetchall()]
        previous = _read_checkpoint(store, LATEST, signing_key.public_key)
        start = previous.tree_size if previous is not None else 0
        tail = con.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq",
            [start],
        ).fetchall()
    if previous is not None:
        if len(hashes) < start or _root(hashes[:start]) != previous.root_hash:
            raise IntegrityError(
                f"the audit log no longer matches checkpoint {previous.key} (size {start}, root "
                f"{previous.root_hash[:16]}…): entries up to seq {start} were rewritten or deleted; run "
                "`databright ledger verify` to find them — no new checkpoint was signed"
            )
        if start == len(hashes):
            return previous
    problems = _chain_problems(tail, start + 1, hashes[start - 1] if start else GENESIS)
    if problems:
        raise IntegrityError(
            f"the audit log's new entries do not chain: {problems[0]}; no checkpoint was signed — run "
            "`databright ledger verify` for the full list"
        )
    statement = {
        "log": LOG_NAME,
        "tree_size": len(hashes),
        "root_hash": _root(hashes),
        "last_entry_hash": hashes[-1] if hashes else GENESIS,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    envelope = sign_envelope(signing_key, CHECKPOINT_PAYLOAD_TYPE, canonical_json(statement))
    made = Checkpoint.open(envelope, signing_key.public_key, "just signed")
    data = canonical_json(envelope)
    # The numbered file first: a crash before latest.json leaves the previous latest, which is true.
    store.put_bytes(made.key, data)
    store.put_bytes(LATEST, data)
    return made


# --- verification ---------------------------------------------------------------------------------


def _chain_problems(rows: Sequence[tuple[Any, ...]], first_seq: int, prev: str) -> list[str]:
    """Problems of ``(seq, kind, subject, body, prev_hash, entry_hash)`` rows as a chain from ``prev``."""
    problems, expected = [], first_seq
    for seq, kind, subject, body, prev_hash, stored in rows:
        if seq != expected:
            what = f"seqs {expected}..{seq - 1} are missing" if seq > expected else "seq repeats"
            problems.append(f"audit_log seq {seq}: {what} (a row was deleted, inserted or renumbered)")
        if prev_hash != prev:
            problems.append(
                f"audit_log seq {seq}: prev_hash {str(prev_hash)[:16]}… does not link to the entry before it "
                f"({prev[:16]}…); rows were reordered, deleted or inserted"
            )
        if kind not in KINDS or not isinstance(body, str) or not _HEX64.match(str(prev_hash)):
            problems.append(f"audit_log seq {seq}: kind {kind!r} or prev_hash is not a valid entry")
        elif entry_hash(int(seq), kind, subject, body, prev_hash) != stored:
            problems.append(
                f"audit_log seq {seq} ({kind} {subject}): entry_hash does not recompute; the row was edited"
            )
        prev, expected = str(stored), int(seq) + 1
    return problems


def _differences(logged: str, now: dict[str, Any]) -> str:
    try:
        then = json.loads(logged)
    except json.JSONDecodeError:
        return "its logged body is not JSON"
    keys = sorted(set(then) | set(now)) if isinstance(then, dict) else []
    return "; ".join(
        f"{k} {then.get(k)!r} logged, {now.get(k)!r} now" for k in keys if then.get(k) != now.get(k)
    )


def _row_problems(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> list[str]:
    """Every transfer batch, settlement row and period's allocations against its last entry, both ways."""

    def periods(table: str) -> list[str]:
        return [r[0] for r in con.execute(f"SELECT DISTINCT period FROM {table} ORDER BY period").fetchall()]

    batches = transfer_batch_bodies(con)
    settlements = {p: settlement_body(con, p) for p in periods("settlements")}
    allocations = {p: allocations_body(con, p) for p in periods("allocations")}
    problems = []
    for kind, what, table, bodies in (
        ("transfers", "transfers posted at", "transfers", {k: body for k, (body, _) in batches.items()}),
        ("settlement-state", "settlement row of period", "settlements", settlements),
        ("allocations", "allocation rows of period", "allocations", allocations),
    ):
        logged = {r[2]: (int(r[0]), r[3]) for r in rows if r[1] == kind}  # the last entry per subject
        for subject, body in bodies.items():
            entry = logged.pop(subject, None)
            if entry is None:
                # A batch is named by its instant, its size and its first transfer id.
                named = (
                    f" ({batches[subject][0]['rows']}, first {batches[subject][1]})"
                    if kind == "transfers"
                    else ""
                )
                problems.append(
                    f"{what} {subject}{named}: not in the audit log (written outside the ledger and "
                    "settlement code)"
                )
            elif entry[1] != _canonical(body or {}):
                problems.append(
                    f"{what} {subject}: not as logged at seq {entry[0]}: {_differences(entry[1], body or {})}"
                )
        problems += [
            f"{what} {subject}: logged at seq {seq} but deleted from {table}"
            for subject, (seq, text) in logged.items()
            # A period whose last allocations entry is an empty replacement rightly has no rows.
            if not (kind == "allocations" and '"rows":0,' in text)
        ]
    return problems


def _checkpoint_problems(
    store: ObjectStore, public_key: PublicKey, hashes: list[str], posted: list[str]
) -> tuple[Checkpoint | None, list[str]]:
    try:
        latest = _read_checkpoint(store, LATEST, public_key)
    except DatabrightError as exc:
        return None, [str(exc)]
    if latest is None:
        if posted:
            return None, [
                f"no checkpoint yet: period {posted[0]} is posted but {LATEST} does not exist; sign one with "
                "checkpoint(db, store, load_audit_key(keys_dir))"
            ]
        return None, []
    problems = []
    numbered = [k for k in store.list(CHECKPOINTS) if re.fullmatch(re.escape(CHECKPOINTS) + r"\d+\.json", k)]
    for key in sorted(numbered, key=lambda k: int(k[len(CHECKPOINTS) : -5])):
        try:
            signed = _read_checkpoint(store, key, public_key)
        except DatabrightError as exc:
            problems.append(str(exc))
            continue
        if signed is None or signed.key != key:
            problems.append(f"checkpoint {key} is not named by the size it signs; it was moved")
        elif signed.tree_size > latest.tree_size:
            problems.append(
                f"{LATEST} signs size {latest.tree_size} but {key} is newer: latest.json was rolled back"
            )
        elif signed.tree_size > len(hashes):
            problems.append(
                f"checkpoint {key} signs {signed.tree_size} entries but the log has {len(hashes)}: "
                f"seqs {len(hashes) + 1}..{signed.tree_size} were deleted"
            )
        elif _root(hashes[: signed.tree_size]) != signed.root_hash or (
            signed.tree_size and hashes[signed.tree_size - 1] != signed.last_entry_hash
        ):
            problems.append(
                f"checkpoint {key}: the Merkle root of the log's first {signed.tree_size} entries is not the "
                f"signed root {signed.root_hash[:16]}…; entries up to seq {signed.tree_size} were rewritten"
            )
    if not store.exists(latest.key):
        problems.append(f"{LATEST} signs size {latest.tree_size} but {latest.key} is missing from the store")
    return latest, problems


@dataclass(frozen=True)
class AuditChainReport:
    entries: int
    checkpoint: Checkpoint | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def summary(self) -> str:
        if self.checkpoint is None:
            signed = "no checkpoint yet (no settlement posted)"
        else:
            signed = (
                f"checkpoint at size {self.checkpoint.tree_size} root {self.checkpoint.root_hash[:16]}… "
                f"verifies; {self.entries - self.checkpoint.tree_size} entries since"
            )
        return f"audit chain: {self.entries} entries hash-chained and matching their rows; {signed}"


def verify_audit_chain(db: ExchangeDB, store: ObjectStore, public_key: PublicKey) -> AuditChainReport:
    """Recompute the chain, match every transfer/settlement/allocation row, check every checkpoint."""
    with db.connect() as con:
        rows = con.execute(f"SELECT {_ENTRY_COLUMNS} FROM audit_log ORDER BY seq").fetchall()
        problems = _chain_problems(rows, 1, GENESIS) + _row_problems(con, rows)
        posted = con.execute("SELECT period FROM settlements WHERE state = 'posted' ORDER BY period")
        posted_periods = [r[0] for r in posted.fetchall()]
    latest, signed = _checkpoint_problems(store, public_key, [r[5] for r in rows], posted_periods)
    problems += signed
    if len(problems) > _MAX_PROBLEMS:
        problems = [*problems[:_MAX_PROBLEMS], f"... and {len(problems) - _MAX_PROBLEMS} more problems"]
    return AuditChainReport(len(rows), latest, tuple(problems))
