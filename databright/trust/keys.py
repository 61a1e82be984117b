"""Key release, the exchange side: a data key per dataset version, released only to attested sessions.

Envelope encryption. The exchange holds one master key, 32 random bytes in ``<home>/keys/
data-master.key`` (mode 0600, created on first use; a file readable by others is refused). Each
dataset version gets its own random 256-bit data key, which seals that version's files at rest
(``sealing``). The data key is stored only wrapped: AES-256-GCM under the master key with AAD =
canonical JSON of ``{dataset, version, purpose}``, in ``data_keys``; a wrapped key copied to another
dataset or version does not open. The key id is a one-way name (``sealing.data_key_id``).
``DataKeys`` is that table; ``seal_new_version`` is what ingest and withdrawal call to seal a
version's shards before its registry commit. A key made for a version whose publication then
failed is an orphan: the next publication of that version number replaces it with a fresh key
(``DataKeys.fresh``), so it never decrypts the files of the version that does get registered.

Release. A worker session publishes an X25519 key signed by its attested session key (``kex``).
``KeyService.release`` hands out keys only when all of these hold, else ``AttestationError``:

    RESULT_MISSING / RESULT_UNKNOWN / RESULT_TAMPERED   no result, or not the verifier's signed one
    RESULT_NOT_OK                                       its status is not ``ok``
    RESULT_EXPIRED / RESULT_NOT_YET_VALID               ``now`` is outside [issued_at, expires_at)
    TASK_NOT_ALLOWED                                    the result admitted another enclave task
    TEE_TYPE_NOT_ALLOWED / MEASUREMENT_NOT_ALLOWED      the current policy no longer admits it
    KEX_MALFORMED / KEX_SIGNATURE_INVALID               the X25519 key is not signed by the session key
    KEX_BINDING_MISMATCH / KEX_KEY_INVALID              it names another result, or is a weak point

A version n reads the files of v1..vn, so a release carries the data keys of all of them, each
wrapped to the session's X25519 key (``kex.wrap_to_session``). Every decision, a release or a
refusal, is a row of ``key_releases``: who (provider, session key), which result, which keys, when,
and the result's ``assurance`` — a release under a simulated result is recorded ``simulated``.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from databright.crypto import PublicKey, canonical_json, sha256_hex
from databright.datasets.registry import Registry
from databright.db import ExchangeDB
from databright.errors import AttestationError, ConfigError, DatasetError, IntegrityError
from databright.trust.evidence import iso, parse_iso, utc
from databright.trust.kex import KexKeyPair as KexKeyPair  # the worker side, re-exported from here
from databright.trust.kex import KeyRelease, open_kex_envelope, wrap_to_session
from databright.trust.kex import kex_envelope as kex_envelope
from databright.trust.kex import unwrap_data_key as unwrap_data_key
from databright.trust.policy import AttestationPolicy
from databright.trust.sealing import (
    KEY_BYTES,
    DataKey,
    SealedVersion,
    data_key_id,
    keep_plaintext_out_of_dvc,
    seal_version_files,
)
from databright.trust.verifier import AttestationResult, load_result, load_verifier_key

if TYPE_CHECKING:
    import datetime as dt

    from databright.config import Settings

DDL = """
CREATE TABLE IF NOT EXISTS data_keys (
    dataset       VARCHAR NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    key_id        VARCHAR NOT NULL,       -- data_key_id(key): a one-way name, never the key
    master_key_id VARCHAR NOT NULL,       -- which master key wrapped it
    wrapped_key   BLOB NOT NULL,          -- nonce ‖ AES-GCM(master key, data key)
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (dataset, version)
);
CREATE TABLE IF NOT EXISTS key_releases (
    release_id           VARCHAR PRIMARY KEY,
    outcome              VARCHAR NOT NULL,  -- released | refused
    reason               VARCHAR,           -- the AttestationError code of a refusal
    dataset              VARCHAR NOT NULL,
    version              INTEGER NOT NULL,
    task                 VARCHAR NOT NULL,
    result_id            VARCHAR,
    provider_id          VARCHAR,
    assurance            VARCHAR,           -- simulated | hardware, from the attestation result
    session_public_key   VARCHAR,           -- Ed25519, hex
    recipient_public_key VARCHAR,           -- X25519, hex
    key_ids              VARCHAR NOT NULL,  -- JSON list of the data key ids released, v1 first
    decided_at           TIMESTAMPTZ NOT NULL
);
"""

MASTER_KEY_FILE = "data-master.key"
DATA_KEY_PURPOSE = "databright/data-key/v1"
_MASTER_ID_CONTEXT = b"databright/master-key-id/v1\x00"
_NONCE_BYTES = 12


# --- the master key ---------------------------------------------------------------------------


class MasterKey:
    """The exchange's key-wrapping key. The raw bytes stay in this object and its file."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"a master key has {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = sha256_hex(_MASTER_ID_CONTEXT + key)[:16]

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> MasterKey:
        path = keys_dir / MASTER_KEY_FILE
        if not path.exists():
            keys_dir.mkdir(parents=True, exist_ok=True)
            tmp = keys_dir / f".{MASTER_KEY_FILE}.{uuid.uuid4().hex[:8]}.tmp"
            # Owner-only from the first byte; then hard-linked into place, which is atomic and never
            # replaces: two processes creating it at once end up agreeing on one key.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_bytes(KEY_BYTES))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"master key {path} has mode {mode:04o}, readable by others; run `chmod 600 {path}` "
                "and rotate the data keys if anyone else could have read it"
            )
        raw = path.read_bytes()
        if len(raw) != KEY_BYTES:
            raise ConfigError(
                f"master key {path} holds {len(raw)} bytes, expected {KEY_BYTES}; restore it from backup "
                "(deleting it makes every sealed dataset unreadable)"
            )
        return cls(raw)

    def wrap(self, key: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, key, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
        except (InvalidTag, ValueError) as exc:
            raise IntegrityError(
                f"a wrapped data key does not open under master key {self.key_id}: the row was edited "
                "or copied from another dataset version; restore data_keys from backup"
            ) from exc

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id})"


def data_key_aad(dataset: str, version: int) -> bytes:
    return canonical_json({"dataset": dataset, "version": version, "purpose": DATA_KEY_PURPOSE})


# --- data keys ------------------------------------------------------------------------------


def _check_name(dataset: Any, version: Any) -> None:
    if (
        not isinstance(dataset, str)
        or not dataset
        or isinstance(version, bool)
        or not isinstance(version, int)
    ):
        raise DatasetError(f"dataset {dataset!r} v{version!r}: expected a name and a version number ≥ 1")


class DataKeys:
    """The ``data_keys`` table: one data key per dataset version, stored wrapped by the master key."""

    def __init__(self, db: ExchangeDB, keys_dir: Path) -> None:
        self.db = db
        self.master = MasterKey.load_or_create(keys_dir)

    @classmethod
    def from_settings(cls, settings: Settings, db: ExchangeDB | None = None) -> DataKeys:
        return cls(db or settings.exchange_db(), settings.keys_dir)

    def find(self, dataset: str, version: int) -> DataKey | None:
        """The data key of one version, unwrapped, or None when the version was never sealed."""
        _check_name(dataset, version)
        rows = self.db.query(
            "SELECT key_id, master_key_id, wrapped_key FROM data_keys WHERE dataset = ? AND version = ?",
            [dataset, version],
        )
        if not rows:
            return None
        key_id, master_key_id, wrapped = rows[0]
        if master_key_id != self.master.key_id:
            raise ConfigError(
                f"the data key of {dataset!r} v{version} was wrapped by master key {master_key_id}, but "
                f"keys/{MASTER_KEY_FILE} is {self.master.key_id}; restore the original master key"
            )
        raw = self.master.unwrap(bytes(wrapped), data_key_aad(dataset, version))
        if data_key_id(raw) != key_id:
            raise IntegrityError(f"the data key of {dataset!r} v{version} does not match its id {key_id}")
        return DataKey(dataset, version, key_id, raw)

    def get(self, dataset: str, version: int) -> DataKey:
        found = self.find(dataset, version)
        if found is None:
            raise DatasetError(
                f"dataset {dataset!r} v{version} has no data key, so its files were never sealed; seal "
                "the version (sealing.seal_version with KeyService.data_key(..., create=True)) first",
                dataset=dataset,
                version=version,
            )
        return found

    def _insert(self, dataset: str, version: int, *, replace: bool) -> None:
        key = secrets.token_bytes(KEY_BYTES)
        row = [
            dataset,
            version,
            data_key_id(key),
            self.master.key_id,
            self.master.wrap(key, data_key_aad(dataset, version)),
        ]
        with self.db.transaction() as con:
            if replace:
                con.execute("DELETE FROM data_keys WHERE dataset = ? AND version = ?", [dataset, version])
            # Without ``replace`` a concurrent creator may win the insert; then its key is the one both use.
            con.execute("INSERT INTO data_keys VALUES (?, ?, ?, ?, ?, now()) ON CONFLICT DO NOTHING", row)

    def create(self, dataset: str, version: int) -> DataKey:
        """The version's data key, made on first use; later calls return the same key."""
        _check_name(dataset, version)
        if self.find(dataset, version) is None:
            self._insert(dataset, version, replace=False)
        return self.get(dataset, version)

    def fresh(self, dataset: str, version: int) -> DataKey:
        """A new data key for a version about to be published (the caller holds ``version_lock``).

        A row already there belongs to a publication of this version number that failed before its
        registry commit; it is replaced, so nothing sealed by that attempt opens under the new key.
        A registered version keeps its key: asking for a fresh one is refused.
        """
        _check_name(dataset, version)
        registered = self.db.query(
            "SELECT 1 FROM dataset_versions WHERE dataset = ? AND version = ?", [dataset, version]
        )
        if registered:
            raise DatasetError(
                f"{dataset!r} v{version} is registered, so its data key is fixed; read it with "
                "DataKeys.get, or publish the next version number",
                dataset=dataset,
                version=version,
            )
        self._insert(dataset, version, replace=True)
        return self.get(dataset, version)


def seal_new_version(
    settings: Settings, db: ExchangeDB, dataset: str, version: int, files: Mapping[str, str]
) -> SealedVersion:
    """Seal the worker files of a version being published (workspace path -> sha256), fresh key.

    Called by ingest and withdrawal after the version folder is written and before DVC and the
    registry see it; the workspace's ``.dvcignore`` keeps the plaintext beside the sealed copies out
    of DVC, so the DVC cache and remote hold the shards only as ciphertext.
    """
    keep_plaintext_out_of_dvc(settings.workspace_dir)
    key = DataKeys.from_settings(settings, db).fresh(dataset, version)
    return seal_version_files(settings.workspace_dir, files, key)


@dataclass(frozen=True)
class ReleaseLogEntry:
    """One row of ``key_releases``: a release or a refusal, with who asked and under which result."""

    release_id: str
    outcome: str
    reason: str | None
    dataset: str
    version: int
    task: str
    result_id: str | None
    provider_id: str | None
    assurance: str | None
    session_public_key: str | None
    recipient_public_key: str | None
    key_ids: tuple[str, ...]
    decided_at: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key_ids": list(self.key_ids)}


_LOG_COLUMNS = tuple(ReleaseLogEntry.__dataclass_fields__)


# --- the key service --------------------------------------------------------------------------


class KeyService:
    """The exchange side: makes data keys, keeps them wrapped, releases them to attested sessions."""

    def __init__(
        self, db: ExchangeDB, keys_dir: Path, *, verifier_public_key: PublicKey, policy: AttestationPolicy
    ) -> None:
        self.db = db
        self.keys = DataKeys(db, keys_dir)
        self.master = self.keys.master
        self.verifier_public_key = verifier_public_key
        self.policy = policy

    @classmethod
    def from_settings(
        cls, settings: Settings, db: ExchangeDB | None = None, policy: AttestationPolicy | None = None
    ) -> KeyService:
        return cls(
            db or settings.exchange_db(),
            settings.keys_dir,
            verifier_public_key=load_verifier_key(settings.keys_dir).public_key,
            policy=policy or settings.attestation_policy(),
        )

    def data_key(self, dataset: str, version: int, *, create: bool = False) -> DataKey:
        """The data key of one version, unwrapped; ``create`` makes it on first use (idempotent)."""
        return self.keys.create(dataset, version) if create else self.keys.get(dataset, version)

    def release(
        self,
        dataset: str,
        version: int,
        *,
        attestation_result: AttestationResult | str | None,
        kex_envelope: Any,
        task: str,
        now: dt.datetime | None = None,
    ) -> KeyRelease:
        """Release the data keys of ``dataset`` v1..``version`` to an attested session, or refuse."""
        moment = utc(now)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DatasetError(f"version {version!r} of {dataset!r} is not a version number ≥ 1")
        Registry(self.db).get_version(dataset, version)  # UnknownDataset names the versions there are
        request = (dataset, version, task)
        result: AttestationResult | None = None
        try:
            result = self._affirming(attestation_result, task, moment)
            kex = open_kex_envelope(kex_envelope, result)
            assurance = result.assurance
            keys = tuple(
                wrap_to_session(self.data_key(dataset, v), kex.x25519_public_key, result_id=result.result_id,
                                assurance=assurance)
                for v in range(1, version + 1)
            )  # fmt: skip
        except AttestationError as exc:
            self._log("kr-" + uuid.uuid4().hex, exc.code, request, result, None, (), moment)
            raise
        granted = KeyRelease(
            "kr-" + uuid.uuid4().hex, dataset, version, task, result.result_id, result.provider_id,
            assurance, iso(moment), keys,
        )  # fmt: skip
        key_ids = tuple(k.key_id for k in keys)
        self._log(granted.release_id, None, request, result, kex.x25519_public_key, key_ids, moment)
        return granted

    def _affirming(
        self, claimed: AttestationResult | str | None, task: str, moment: dt.datetime
    ) -> AttestationResult:
        if claimed is None:
            raise AttestationError(
                "RESULT_MISSING",
                "no attestation result was presented; the worker must attest (nonce, evidence, appraisal) "
                "before it may read any dataset",
            )
        if not isinstance(claimed, AttestationResult | str):
            raise AttestationError("RESULT_MALFORMED", f"attestation result is a {type(claimed).__name__}")
        result_id = claimed if isinstance(claimed, str) else claimed.result_id
        # The stored, verifier-signed result is the truth; an object handed in only names it.
        result = load_result(self.db, self.verifier_public_key, result_id)
        if isinstance(claimed, AttestationResult) and claimed != result:
            raise AttestationError(
                "RESULT_TAMPERED",
                f"the attestation result presented differs from the signed result {result_id!r} on record",
            )
        context = {"result_id": result_id}
        if result.status != "ok":
            raise AttestationError(
                "RESULT_NOT_OK",
                f"attestation result {result_id} has status {result.status!r}, not 'ok'; "
                "the worker must attest again",
                **context,
            )
        issued = parse_iso(result.issued_at, field="issued_at", code="RESULT_MALFORMED")
        expires = parse_iso(result.expires_at, field="expires_at", code="RESULT_MALFORMED")
        if moment >= expires:
            raise AttestationError(
                "RESULT_EXPIRED",
                f"attestation result {result_id} expired at {result.expires_at} (now {iso(moment)}); "
                "attest again with a fresh nonce",
                **context,
            )
        if moment < issued:
            raise AttestationError(
                "RESULT_NOT_YET_VALID",
                f"attestation result {result_id} is issued at {result.issued_at}, after now ({iso(moment)}); "
                "check the exchange's clock",
                **context,
            )
        if result.task != task:
            raise AttestationError(
                "TASK_NOT_ALLOWED",
                f"attestation result {result_id} admits task {result.task!r}, not {task!r}; attest the "
                f"worker for {task!r}",
                **context,
            )
        policy = self.policy
        if result.tee_type not in policy.allowed_tee_types:
            raise AttestationError(
                "TEE_TYPE_NOT_ALLOWED",
                f"policy {policy.name!r} v{policy.version} no longer allows tee_type {result.tee_type!r} "
                f"(allowed: {list(policy.allowed_tee_types)}); attest on allowed hardware",
                **context,
            )
        identity = policy.identity_for(result.tee_type)
        measurements = (
            policy.measurements
            if result.tee_type == "simulated"
            else (identity.measurements if identity else {})
        )
        if result.measurement not in measurements.get(task, ()):
            raise AttestationError(
                "MEASUREMENT_NOT_ALLOWED",
                f"policy {policy.name!r} v{policy.version} no longer allows measurement "
                f"{result.measurement} of task {task!r}; redeploy the allowed task version and attest again",
                **context,
            )
        return result

    def _log(
        self,
        release_id: str,
        refused: str | None,
        request: tuple[str, int, str],
        result: AttestationResult | None,
        recipient: str | None,
        key_ids: tuple[str, ...],
        moment: dt.datetime,
    ) -> None:
        """One ``key_releases`` row; ``refused`` is the refusal's code, ``None`` for a release."""
        values = [
            release_id, "refused" if refused else "released", refused, *request,
            *((result.result_id, result.provider_id, result.assurance, result.session_public_key)
              if result else (None, None, None, None)),
            recipient, json.dumps(list(key_ids)), moment,
        ]  # fmt: skip
        marks = ", ".join("?" * len(values))
        with self.db.transaction() as con:
            con.execute(f"INSERT INTO key_releases ({', '.join(_LOG_COLUMNS)}) VALUES ({marks})", values)

    def release_log(self, dataset: str | None = None) -> list[ReleaseLogEntry]:
        """Every release and refusal, oldest first (optionally of one dataset)."""
        sql = f"SELECT {', '.join(_LOG_COLUMNS)} FROM key_releases"
        params: list[Any] = []
        if dataset is not None:
            sql += " WHERE dataset = ?"
            params.append(dataset)
        entries = []
        for row in self.db.query(sql + " ORDER BY decided_at, release_id", params):
            values = dict(zip(_LOG_COLUMNS, row, strict=True))
            values["key_ids"] = tuple(json.loads(values["key_ids"]))
            values["decided_at"] = iso(values["decided_at"])
            entries.append(ReleaseLogEntry(**values))
        return entries
