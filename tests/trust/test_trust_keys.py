"""Key release and sealed files: round trips, every refusal, and every way a sealed file can be altered."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import tempfile
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from trust_testkit import MEASUREMENT, NOW, TASK

from databright.crypto import SigningKey, canonical_json, digest_file, sign_envelope
from databright.datasets.registry import NewVersion, Registry, insert_version_row
from databright.db import ExchangeDB
from databright.errors import AttestationError, ConfigError, DatasetError, IntegrityError, UnknownDataset
from databright.trust import ATTESTATION_RESULT_TYPE, SimulatedVerifier, production_policy, registry
from databright.trust import keys as keys_module
from databright.trust.kex import KexKeyPair, KeyRelease, kex_envelope, unwrap_data_key
from databright.trust.keys import MASTER_KEY_FILE, DataKeys, KeyService, MasterKey, seal_new_version
from databright.trust.sealing import (
    HEADER_BYTES,
    PLAINTEXT_IGNORE,
    SEALED_SUFFIX,
    TAG_BYTES,
    DataKey,
    data_key_id,
    keep_plaintext_out_of_dvc,
    open_release,
    open_sealed,
    open_sealed_to,
    open_shards,
    seal_file,
    seal_version,
    seal_version_files,
    version_shards,
)

DATASET = "credit"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
AAD = canonical_json({"dataset": DATASET, "version": 1, "file": "datasets/credit/v1/records.parquet"})

# --- helpers ----------------------------------------------------------------------------------


def sealed_copy(data: bytes, chunk_size: int, folder: Path, key: bytes = KEY, aad: bytes = AAD) -> Path:
    src = folder / "plain.bin"
    src.write_bytes(data)
    return seal_file(src, folder / "plain.bin.sealed", key, aad, chunk_size=chunk_size).path


def refused(path: Path, key: bytes = KEY, aad: bytes = AAD) -> IntegrityError:
    with pytest.raises(IntegrityError) as info:
        open_sealed(path, key, aad)
    assert str(path) in str(info.value)
    return info.value


def write_records(path: Path, ids: list[str], owner: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"x": list(range(len(ids))), "record_id": ids, "owner": [owner] * len(ids)})
    pq.write_table(table, path)


def register_versions(db: ExchangeDB, workspace: Path, n: int = 3) -> None:
    """``credit`` v1..vn, each adding 4 records; v3 also withdraws one record of v1."""
    with db.transaction() as con:
        con.execute("INSERT INTO datasets VALUES (?, ?, ?, ?)", [DATASET, "tabular-v1", "c" * 64, NOW])
        for v in range(1, n + 1):
            folder = f"datasets/{DATASET}/v{v}"
            ids = [f"{v:02d}{i:02d}".ljust(64, "a") for i in range(4)]
            write_records(workspace / folder / "records.parquet", ids, f"owner{v}")
            rel = f"{folder}/records.parquet"
            row = NewVersion(
                v, v - 1 or None, "c" * 64, "s" * 64, "0" * 64, 4 * v, f"{folder}/manifest.json",
                "m" * 64, rel, digest_file(workspace / rel), "d" * 32,
            )  # fmt: skip
            insert_version_row(con, DATASET, row, NOW, retry="test")
            if v == 3:
                wrel = f"{folder}/withdrawn.parquet"
                pq.write_table(pa.table({"record_id": ["0100".ljust(64, "a")]}), workspace / wrel)
                con.execute(
                    "INSERT INTO withdrawals VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [DATASET, v, "owner1", 1, wrel, digest_file(workspace / wrel), NOW],
                )


def attest(verifier: SimulatedVerifier, make_evidence, session_key: SigningKey, task: str = TASK):
    nonce = verifier.issue_nonce(now=NOW)
    return verifier.appraise(
        make_evidence(nonce), session_public_key=session_key.public_key, nonce=nonce, task=task,
        provider_id="prov-a", now=NOW,
    )[0]  # fmt: skip


@pytest.fixture
def service(settings, memory_db, verifier_key, policy) -> KeyService:
    register_versions(memory_db, settings.workspace_dir)
    svc = KeyService(memory_db, settings.keys_dir, verifier_public_key=verifier_key.public_key, policy=policy)
    for v in (1, 2, 3):
        seal_version(
            settings.workspace_dir,
            Registry(memory_db).get_version(DATASET, v),
            svc.data_key(DATASET, v, create=True),
        )
    return svc


@pytest.fixture
def result(verifier, make_evidence, session_key):
    return attest(verifier, make_evidence, session_key)


# --- sealed files -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=700), chunk_size=st.integers(16, 130))
def test_seal_round_trip_and_layout(data: bytes, chunk_size: int):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "plain.bin"
        src.write_bytes(data)
        sealed = seal_file(src, Path(tmp) / "out.sealed", KEY, AAD, chunk_size=chunk_size)
        chunks = max(1, math.ceil(len(data) / chunk_size))
        assert sealed.chunks == chunks
        assert sealed.sealed_bytes == HEADER_BYTES + len(data) + TAG_BYTES * chunks
        assert sealed.plaintext_sha256 == digest_file(src)
        assert sealed.key_id == data_key_id(KEY)
        assert open_sealed(sealed.path, KEY, AAD) == data
        opened = open_sealed_to(sealed.path, Path(tmp) / "back.bin", KEY, AAD)
        assert opened.path.read_bytes() == data and opened.plaintext_sha256 == sealed.plaintext_sha256
        # Same plaintext, same key: a fresh nonce prefix makes different ciphertext.
        again = seal_file(src, Path(tmp) / "again.sealed", KEY, AAD, chunk_size=chunk_size)
        assert again.path.read_bytes() != sealed.path.read_bytes()


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_flipping_any_byte_is_refused_naming_the_file_and_chunk(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = sealed_copy(bytes(range(200)), 64, Path(tmp))
        blob = bytearray(path.read_bytes())
        index = data.draw(st.integers(0, len(blob) - 1))
        blob[index] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(blob))
        error = refused(path)
        if index >= HEADER_BYTES:
            assert error.context["chunk"] == (index - HEADER_BYTES) // (64 + TAG_BYTES)
            assert f"chunk {error.context['chunk']}" in str(error)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_truncation_is_refused(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = sealed_copy(bytes(range(200)), 64, Path(tmp))
        blob = path.read_bytes()
        path.write_bytes(blob[: data.draw(st.integers(0, len(blob) - 1))])
        refused(path)


def test_truncation_at_a_chunk_boundary_says_truncated(tmp_path):
    path = sealed_copy(bytes(200), 64, tmp_path)  # chunks of 64, 64, 64, 8
    blob = path.read_bytes()
    path.write_bytes(blob[: HEADER_BYTES + 3 * (64 + TAG_BYTES)])
    error = refused(path)
    assert error.context["chunk"] == 2 and "truncated" in str(error)


def test_swapped_and_reordered_chunks_are_refused(tmp_path):
    path = sealed_copy(bytes(range(256)), 64, tmp_path)  # four full chunks
    blob = path.read_bytes()
    block = 64 + TAG_BYTES
    chunks = [blob[HEADER_BYTES + i * block : HEADER_BYTES + (i + 1) * block] for i in range(4)]
    path.write_bytes(blob[:HEADER_BYTES] + chunks[0] + chunks[2] + chunks[1] + chunks[3])
    assert refused(path).context["chunk"] == 1
    path.write_bytes(blob[:HEADER_BYTES] + chunks[0] + chunks[1] + chunks[3] + chunks[2])
    assert refused(path).context["chunk"] == 2


def test_appended_bytes_are_refused(tmp_path):
    full = sealed_copy(bytes(128), 64, tmp_path)  # the final chunk is full
    blob = full.read_bytes()
    full.write_bytes(blob + blob[-(64 + TAG_BYTES) :])
    error = refused(full)
    assert error.context["chunk"] == 1 and "appended" in str(error)
    short = sealed_copy(bytes(100), 64, tmp_path)  # the final chunk is short: extra bytes join it
    short.write_bytes(short.read_bytes() + b"\x00")
    assert refused(short).context["chunk"] == 1


def test_wrong_aad_and_wrong_key_are_refused(tmp_path):
    path = sealed_copy(b"records of v1", 64, tmp_path)
    other_file = canonical_json(
        {"dataset": DATASET, "version": 2, "file": "datasets/credit/v1/records.parquet"}
    )
    assert refused(path, aad=other_file).context["chunk"] == 0
    assert "sealed under data key" in str(refused(path, key=OTHER_KEY))


def test_a_failed_open_leaves_no_output_behind(tmp_path):
    path = sealed_copy(os.urandom(300), 64, tmp_path)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1  # only the last chunk is bad: earlier chunks were already written to the temp file
    path.write_bytes(bytes(blob))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError):
        open_sealed_to(path, out / "plain.bin", KEY, AAD)
    assert list(out.iterdir()) == []


def test_memory_is_bounded_by_the_chunk_not_the_file(tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8 << 20))
    tracemalloc.start()
    try:
        sealed = seal_file(src, tmp_path / "big.sealed", KEY, AAD, chunk_size=64 << 10)
        open_sealed_to(sealed.path, tmp_path / "back.bin", KEY, AAD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # an 8 MiB file through 64 KiB chunks
    assert digest_file(tmp_path / "back.bin") == digest_file(src)


def test_bad_chunk_sizes_and_keys_are_refused(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x")
    for size in (0, 15, (64 << 20) + 1):
        with pytest.raises(IntegrityError, match="chunk size"):
            seal_file(src, tmp_path / "a.sealed", KEY, AAD, chunk_size=size)
    with pytest.raises(IntegrityError, match="32 bytes"):
        seal_file(src, tmp_path / "a.sealed", KEY[:16], AAD)
    src.write_bytes(b"not sealed at all, just some text here to fill a header")
    assert "not a sealed file" in str(refused(src))


# --- the master key and data keys ---------------------------------------------------------------


def test_master_key_is_created_once_owner_only(settings):
    first = MasterKey.load_or_create(settings.keys_dir)
    path = settings.keys_dir / MASTER_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_bytes()) == 32
    assert MasterKey.load_or_create(settings.keys_dir).key_id == first.key_id
    assert [p.name for p in settings.keys_dir.iterdir()] == [MASTER_KEY_FILE]  # no temp file left
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        MasterKey.load_or_create(settings.keys_dir)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="holds 5 bytes"):
        MasterKey.load_or_create(settings.keys_dir)


def test_data_keys_are_per_version_stable_and_never_stored_unwrapped(settings, file_db, verifier_key, policy):
    svc = KeyService(file_db, settings.keys_dir, verifier_public_key=verifier_key.public_key, policy=policy)
    keys = [svc.data_key(DATASET, v, create=True) for v in (1, 2)]
    assert keys[0].key != keys[1].key
    assert svc.data_key(DATASET, 1) == keys[0]  # read back, not made again
    assert "key" not in keys[0].to_dict() and keys[0].key.hex() not in repr(keys[0])
    # Neither the raw key nor its hex appears in any file of the home: DB, keys, store.
    for path in settings.home.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for key in keys:
                assert key.key not in content and key.key.hex().encode() not in content, path
    rows = file_db.query("SELECT version, wrapped_key FROM data_keys ORDER BY version")
    assert all(len(bytes(w)) == 12 + 32 + 16 for _, w in rows)


def test_a_wrapped_key_moved_to_another_version_does_not_open(service, memory_db):
    with memory_db.transaction() as con:
        v1 = con.execute("SELECT wrapped_key FROM data_keys WHERE version = 1").fetchone()[0]
        con.execute("UPDATE data_keys SET wrapped_key = ? WHERE version = 2", [v1])
    with pytest.raises(IntegrityError, match="does not open under master key"):
        service.data_key(DATASET, 2)


def test_a_version_without_a_data_key_or_registry_row_is_refused(service, result, session_key):
    with pytest.raises(DatasetError, match="never sealed"):
        service.data_key(DATASET, 9)
    kex = KexKeyPair.generate().publish(session_key, result.result_id)
    with pytest.raises(UnknownDataset, match="has no version 4"):
        service.release(DATASET, 4, attestation_result=result.result_id, kex_envelope=kex, task=TASK, now=NOW)
    with pytest.raises(UnknownDataset, match="no dataset 'nope'"):
        service.release("nope", 1, attestation_result=result.result_id, kex_envelope=kex, task=TASK, now=NOW)


# --- release to an attested session -----------------------------------------------------------


def test_release_round_trip_reads_the_version(service, result, session_key, settings, memory_db, tmp_path):
    session = KexKeyPair.generate()
    release = service.release(
        DATASET, 3, attestation_result=result, kex_envelope=session.publish(session_key, result.result_id),
        task=TASK, now=NOW,
    )  # fmt: skip
    assert [k.version for k in release.keys] == [1, 2, 3]
    assert release.assurance == "simulated" and all(k.assurance == "simulated" for k in release.keys)
    keys = session.unwrap_release(release)
    assert {v: k.key for v, k in keys.items()} == {v: service.data_key(DATASET, v).key for v in (1, 2, 3)}

    version = Registry(memory_db).get_version(DATASET, 3)
    files = open_release(settings.workspace_dir, version, keys, tmp_path / "worker")
    assert len(files.data_files) == 3 and len(files.withdrawn_files) == 1
    for path, rel in zip(
        [*files.data_files, *files.withdrawn_files],
        [*version.data_paths, *version.withdrawn_paths],
        strict=True,
    ):
        assert path.read_bytes() == (settings.workspace_dir / rel).read_bytes()

    (entry,) = service.release_log(DATASET)
    assert (entry.outcome, entry.reason, entry.result_id, entry.provider_id, entry.assurance) == (
        "released", None, result.result_id, "prov-a", "simulated",
    )  # fmt: skip
    assert entry.recipient_public_key == session.public_key
    assert entry.session_public_key == session_key.public_key.hex
    assert entry.key_ids == tuple(k.key_id for k in release.keys)
    assert KeyRelease.from_dict(json.loads(json.dumps(release.to_dict()))) == release


def refusal(service, code, *, result, kex, task=TASK, now=NOW):
    with pytest.raises(AttestationError) as info:
        service.release(DATASET, 2, attestation_result=result, kex_envelope=kex, task=task, now=now)
    assert info.value.code == code, str(info.value)
    log = service.release_log()
    assert [e.outcome for e in log] == ["refused"] and log[0].reason == code and log[0].key_ids == ()
    return info.value


def test_no_result_gets_nothing(service, session_key):
    kex = KexKeyPair.generate().publish(session_key, "ar-none")
    refusal(service, "RESULT_MISSING", result=None, kex=kex)


def test_unknown_result_gets_nothing(service, session_key):
    kex = KexKeyPair.generate().publish(session_key, "ar-forged")
    refusal(service, "RESULT_UNKNOWN", result="ar-forged", kex=kex)


def test_an_edited_result_object_gets_nothing(service, result, session_key):
    kex = KexKeyPair.generate().publish(session_key, result.result_id)
    forged = dataclasses.replace(result, assurance="hardware")
    refusal(service, "RESULT_TAMPERED", result=forged, kex=kex)


def test_a_result_whose_status_is_not_ok_gets_nothing(service, result, session_key, verifier_key, memory_db):
    revoked = dataclasses.replace(result, result_id="ar-revoked", status="revoked")
    envelope = sign_envelope(verifier_key, ATTESTATION_RESULT_TYPE, canonical_json(revoked.to_dict()))
    row = {k: getattr(revoked, k) for k in ("result_id", "tee_type", "assurance", "measurement")}
    with memory_db.transaction() as con:
        registry.insert_result_row(
            con, **row, session_public_key=revoked.session_public_key, provider_id=revoked.provider_id,
            status="revoked", issued_at=NOW, expires_at=dt.datetime.fromisoformat(revoked.expires_at),
            evidence_key=f"attestation/evidence/{revoked.evidence_digest}.json", envelope=envelope,
        )  # fmt: skip
    kex = KexKeyPair.generate().publish(session_key, "ar-revoked")
    refusal(service, "RESULT_NOT_OK", result="ar-revoked", kex=kex)


def test_an_expired_result_gets_nothing(service, result, session_key):
    kex = KexKeyPair.generate().publish(session_key, result.result_id)
    expired_at = dt.datetime.fromisoformat(result.expires_at)
    refusal(service, "RESULT_EXPIRED", result=result.result_id, kex=kex, now=expired_at)


def test_a_kex_key_signed_by_another_key_gets_nothing(service, result):
    impostor = SigningKey.from_seed(b"a host that never attested")
    kex = KexKeyPair.generate().publish(impostor, result.result_id)
    refusal(service, "KEX_SIGNATURE_INVALID", result=result.result_id, kex=kex)


def test_a_kex_key_published_for_another_result_gets_nothing(service, result, session_key):
    kex = KexKeyPair.generate().publish(session_key, "ar-some-older-result")
    refusal(service, "KEX_BINDING_MISMATCH", result=result.result_id, kex=kex)


def test_a_kex_key_that_is_not_an_envelope_gets_nothing(service, result, session_key):
    refusal(service, "KEX_MALFORMED", result=result.result_id, kex=KexKeyPair.generate().public_key)


def test_a_weak_kex_key_gets_nothing(service, result, session_key):
    kex = kex_envelope(session_key, "00" * 32, result.result_id)  # a low-order point
    refusal(service, "KEX_KEY_INVALID", result=result.result_id, kex=kex)


def test_a_result_for_another_task_gets_nothing(verifier, make_evidence, session_key, service):
    verifier.policy = verifier.policy.allowing("other_task", MEASUREMENT)
    other = attest(verifier, make_evidence, session_key, task="other_task")
    kex = KexKeyPair.generate().publish(session_key, other.result_id)
    refusal(service, "TASK_NOT_ALLOWED", result=other.result_id, kex=kex)


def test_a_policy_change_stops_further_releases(service, result, session_key):
    kex = KexKeyPair.generate().publish(session_key, result.result_id)
    service.policy = production_policy(service.policy)
    refusal(service, "TEE_TYPE_NOT_ALLOWED", result=result.result_id, kex=kex)


def test_a_revoked_measurement_stops_further_releases(service, result, session_key):
    kex = KexKeyPair.generate().publish(session_key, result.result_id)
    service.policy = dataclasses.replace(service.policy, measurements={TASK: ("cd" * 32,)})
    refusal(service, "MEASUREMENT_NOT_ALLOWED", result=result.result_id, kex=kex)


# --- the worker side --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("assurance", "hardware"),
        ("version", 2),
        ("dataset", "other"),
        ("result_id", "ar-x"),
        ("nonce", "00" * 12),
    ],
)
def test_an_altered_wrapped_key_does_not_open(service, result, session_key, field, value):
    session = KexKeyPair.generate()
    release = service.release(
        DATASET, 1, attestation_result=result.result_id,
        kex_envelope=session.publish(session_key, result.result_id), task=TASK, now=NOW,
    )  # fmt: skip
    altered = dataclasses.replace(release.keys[0], **{field: value})
    with pytest.raises(IntegrityError, match="does not open"):
        unwrap_data_key(altered, session)


def test_only_the_requesting_session_can_unwrap(service, result, session_key):
    session = KexKeyPair.generate()
    release = service.release(
        DATASET, 1, attestation_result=result.result_id,
        kex_envelope=session.publish(session_key, result.result_id), task=TASK, now=NOW,
    )  # fmt: skip
    with pytest.raises(IntegrityError, match="released to X25519 key"):
        unwrap_data_key(release.keys[0], X25519PrivateKey.generate())
    # Relabelling the recipient does not help a host holding another private key.
    stranger = KexKeyPair.generate()
    relabelled = dataclasses.replace(release.keys[0], recipient_public_key=stranger.public_key)
    with pytest.raises(IntegrityError, match="does not open"):
        unwrap_data_key(relabelled, stranger)


def test_open_release_refuses_tampered_files_and_missing_keys(service, settings, memory_db, tmp_path):
    version = Registry(memory_db).get_version(DATASET, 2)
    keys = {v: service.data_key(DATASET, v) for v in (1, 2)}
    with pytest.raises(DatasetError, match="no data key for 'credit' v1"):
        open_release(settings.workspace_dir, version, {2: keys[2]}, tmp_path / "a")
    sealed = settings.workspace_dir / (version.data_paths[1] + SEALED_SUFFIX)
    blob = bytearray(sealed.read_bytes())
    blob[HEADER_BYTES + 3] ^= 0x40
    sealed.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="chunk 0") as info:
        open_release(settings.workspace_dir, version, keys, tmp_path / "b")
    assert info.value.context["file"] == str(sealed)


def test_seal_version_refuses_data_that_differs_from_the_registry(service, settings, memory_db):
    version = Registry(memory_db).get_version(DATASET, 2)
    write_records(settings.workspace_dir / version.data_paths[1], ["ff" * 32], "mallory")
    with pytest.raises(IntegrityError, match="refusing to seal altered data"):
        seal_version(settings.workspace_dir, version, service.data_key(DATASET, 2))
    with pytest.raises(IntegrityError, match="belongs to 'credit' v1"):
        seal_version(settings.workspace_dir, version, service.data_key(DATASET, 1))
    assert DataKey(DATASET, 2, data_key_id(KEY), KEY).to_dict() == {
        "dataset": DATASET, "version": 2, "key_id": data_key_id(KEY),
    }  # fmt: skip


def test_seal_version_files_is_all_or_nothing_and_can_drop_the_plaintext(service, settings, memory_db):
    ws = settings.workspace_dir
    version = Registry(memory_db).get_version(DATASET, 3)
    key = service.data_key(DATASET, 3)
    records, withdrawn = version.data_paths[2], version.withdrawn_paths[0]
    for rel in (records, withdrawn):
        (ws / (rel + SEALED_SUFFIX)).unlink()
    good = {records: version.data_digests[2], withdrawn: "0" * 64}  # the second digest is wrong
    with pytest.raises(IntegrityError, match="refusing to seal altered data"):
        seal_version_files(ws, good, key)
    assert not (ws / (records + SEALED_SUFFIX)).exists()  # the first file's seal was undone
    with pytest.raises(IntegrityError, match="its own version's key"):
        seal_version_files(ws, {version.data_paths[0]: version.data_digests[0]}, key)
    files = {records: version.data_digests[2], withdrawn: version.withdrawn_digests[0]}
    sealed = seal_version_files(ws, files, key, remove_plaintext=True)
    assert [f.path for f in sealed.files] == [ws / (rel + SEALED_SUFFIX) for rel in files]
    assert not (ws / records).exists() and not (ws / withdrawn).exists()
    assert sealed.to_dict()["key_id"] == key.key_id


# --- keys for versions being published, and shards ---------------------------------------------


def test_the_worker_side_names_are_still_importable_from_keys():
    assert keys_module.KexKeyPair is KexKeyPair and keys_module.unwrap_data_key is unwrap_data_key


def test_a_fresh_key_replaces_an_orphan_and_a_registered_version_keeps_its_key(service, memory_db, settings):
    keys = DataKeys(memory_db, settings.keys_dir)
    assert keys.find(DATASET, 4) is None
    orphan = keys.fresh(DATASET, 4)  # a publication of v4 that then failed before its commit
    assert keys.find(DATASET, 4) == orphan and keys.create(DATASET, 4) == orphan  # create is idempotent
    replaced = keys.fresh(DATASET, 4)  # the next publication of v4
    assert replaced.key != orphan.key and keys.get(DATASET, 4) == replaced
    assert memory_db.query("SELECT count(*) FROM data_keys WHERE version = 4")[0][0] == 1
    v1 = keys.get(DATASET, 1)
    with pytest.raises(DatasetError, match="'credit' v1 is registered, so its data key is fixed"):
        keys.fresh(DATASET, 1)
    assert keys.get(DATASET, 1) == v1 == service.data_key(DATASET, 1, create=True)
    for bad in (("", 1), (DATASET, True), (DATASET, "1")):
        with pytest.raises(DatasetError, match="expected a name and a version number"):
            keys.find(*bad)


def test_seal_new_version_seals_under_a_fresh_key_and_keeps_plaintext_out_of_dvc(settings, memory_db):
    ws = settings.workspace_dir
    rel = f"datasets/{DATASET}/v1/records.parquet"
    write_records(ws / rel, ["ab" * 32], "alice")
    (ws / ".dvcignore").write_text("# DVC's own header\n*.tmp")  # no trailing newline
    sealed = seal_new_version(settings, memory_db, DATASET, 1, {rel: digest_file(ws / rel)})
    key = DataKeys(memory_db, settings.keys_dir).get(DATASET, 1)
    assert sealed.key_id == key.key_id and [f.path for f in sealed.files] == [ws / (rel + SEALED_SUFFIX)]
    lines = (ws / ".dvcignore").read_text().splitlines()
    assert lines[:2] == ["# DVC's own header", "*.tmp"] and set(PLAINTEXT_IGNORE) <= set(lines)
    keep_plaintext_out_of_dvc(ws)  # idempotent
    assert (ws / ".dvcignore").read_text().splitlines() == lines


def test_shards_name_their_files_and_open_only_as_themselves(service, settings, memory_db, tmp_path):
    version = Registry(memory_db).get_version(DATASET, 3)
    shards = version_shards(settings.workspace_dir, version)
    assert [(s.name, s.version, s.withdrawn) for s in shards] == [
        *((f"datasets/{DATASET}/v{v}/records.parquet", v, False) for v in (1, 2, 3)),
        (f"datasets/{DATASET}/v3/withdrawn.parquet", 3, True),
    ]
    assert all(Path(s.path).is_absolute() and s.path.endswith(SEALED_SUFFIX) for s in shards)
    assert [s.sha256 for s in shards] == [*version.data_digests, *version.withdrawn_digests]
    keys = {v: service.data_key(DATASET, v) for v in (1, 2, 3)}
    data, withdrawn = open_shards(DATASET, shards, keys, tmp_path / "a")
    assert [p.read_bytes() for p in (*data, *withdrawn)] == [
        (settings.workspace_dir / s.name).read_bytes() for s in shards
    ]
    # v2's shard relabelled as v1's file: its label, then its AAD, give it away.
    relabelled = dataclasses.replace(shards[1], version=1)
    with pytest.raises(IntegrityError, match="is labelled v1"):
        open_shards(DATASET, [relabelled], keys, tmp_path / "b")
    moved = dataclasses.replace(shards[1], name=shards[0].name, version=1)
    with pytest.raises(IntegrityError, match="is sealed under data key"):
        open_shards(DATASET, [moved], keys, tmp_path / "c")
    # v3's withdrawal shard presented as v3's delta: the same key, but the AAD names another file.
    swapped = dataclasses.replace(shards[3], name=shards[2].name, withdrawn=False)
    with pytest.raises(IntegrityError, match=r"chunk 0 .* fails authentication"):
        open_shards(DATASET, [swapped], keys, tmp_path / "d")
    assert not [p for d in "bcd" for p in (tmp_path / d).rglob("*") if p.is_file()]  # none left decrypted
    Path(shards[2].path).unlink()
    with pytest.raises(
        IntegrityError, match=r"v3/records\.parquet\.sealed is missing, so 'credit' v3 cannot be released"
    ):
        version_shards(settings.workspace_dir, version)
