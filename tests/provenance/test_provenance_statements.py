"""Stage statements: in-toto shape, DSSE signatures by the stage key, idempotent recording, tampering."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from databright.config import Settings
from databright.crypto import SigningKey, canonical_json, sha256_hex, sign_envelope
from databright.db import ExchangeDB
from databright.errors import ConfigError, IntegrityError
from databright.provenance import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    Artifact,
    ProvenanceLog,
    StageStatement,
    load_stage_key,
    open_statement,
    sign_statement,
    stage_public_key,
)
from databright.storage.objectstore import LocalObjectStore


def hexof(label: str) -> str:
    return sha256_hex(label.encode())


def statement(stage: str = "train", *, produced_at: str = "2026-11-15T12:00:00.000000+00:00", **changes):
    fields = {
        "stage": stage,
        "period": "2026-11",
        "subjects": (Artifact("receipt:job-1", hexof("receipt")), Artifact("model:job-1", hexof("model"))),
        "inputs": (Artifact("dataset:d@v1/manifest.json", hexof("manifest")),),
        "parameters": {"job_id": "job-1", "seed": 11},
        "assurance": "simulated",
        "produced_at": produced_at,
    }
    return StageStatement(**{**fields, **changes})


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.from_seed(b"stage-key")


@pytest.fixture
def log(memory_db: ExchangeDB, tmp_path: Path, key: SigningKey) -> ProvenanceLog:
    return ProvenanceLog(memory_db, LocalObjectStore(tmp_path / "store"), key)


def test_the_statement_is_in_toto_v1_with_sorted_artifacts():
    data = statement().statement()
    assert data["_type"] == "https://in-toto.io/Statement/v1"
    assert data["predicateType"] == PREDICATE_TYPE
    assert data["subject"] == [
        {"name": "model:job-1", "digest": {"sha256": hexof("model")}},
        {"name": "receipt:job-1", "digest": {"sha256": hexof("receipt")}},
    ]
    assert data["predicate"] == {
        "stage": "train",
        "period": "2026-11",
        "inputs": [{"name": "dataset:d@v1/manifest.json", "digest": {"sha256": hexof("manifest")}}],
        "parameters": {"job_id": "job-1", "seed": 11},
        "assurance": "simulated",
        "produced_at": "2026-11-15T12:00:00.000000+00:00",
    }


def test_sign_and_open_round_trip(key: SigningKey):
    envelope = sign_statement(key, statement())
    assert envelope["payloadType"] == PAYLOAD_TYPE
    opened, digest = open_statement(envelope, key.public_key)
    assert opened == statement()
    assert digest == sha256_hex(base64.b64decode(envelope["payload"]))


def test_one_changed_payload_byte_or_another_key_is_refused(key: SigningKey):
    envelope = sign_statement(key, statement())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[payload.index(b"simulated")] = ord("S")
    edited = {**envelope, "payload": base64.b64encode(bytes(payload)).decode()}
    with pytest.raises(IntegrityError, match="does not verify"):
        open_statement(edited, key.public_key)
    other = SigningKey.from_seed(b"someone else")
    with pytest.raises(IntegrityError, match=f"no signature by key {key.public_key.key_id}"):
        open_statement(sign_statement(other, statement()), key.public_key)
    # the stage key's signature over another message type (a usage receipt, say) is no statement
    foreign = sign_envelope(key, "application/vnd.databright.usage-receipt.v1+json", b"{}")
    with pytest.raises(IntegrityError, match="payloadType"):
        open_statement(foreign, key.public_key)


def test_a_non_canonical_payload_is_refused_even_when_signed(key: SigningKey):
    pretty = json.dumps(statement().statement(), indent=1).encode()
    with pytest.raises(IntegrityError, match="not the canonical JSON"):
        open_statement(sign_envelope(key, PAYLOAD_TYPE, pretty), key.public_key)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stage": "deploy"}, "stage 'deploy' is not one of"),
        ({"period": "2026-13"}, "period '2026-13' is not YYYY-MM"),
        ({"assurance": "trusted"}, "assurance 'trusted' is not one of"),
        ({"subjects": ()}, "names no output"),
        ({"inputs": (Artifact("x", hexof("a")), Artifact("x", hexof("b")))}, "name 'x' appears twice"),
        ({"parameters": {"loss": float("nan")}}, "no canonical JSON form"),
        ({"produced_at": "yesterday"}, "not an ISO 8601 time"),
        ({"produced_at": "2026-11-15T12:00:00"}, "has no time zone"),
    ],
)
def test_malformed_statements_are_refused_naming_the_field(changes, message):
    with pytest.raises(IntegrityError, match=message):
        statement(**changes)


@pytest.mark.parametrize(
    ("name", "digest", "message"),
    [
        ("model:job-1", "ab", "digest 'ab' is not 64 lowercase hex digits"),
        ("model:job-1", hexof("m").upper(), "is not 64 lowercase hex digits"),
        ("", hexof("m"), "artifact name '' must be a non-empty string"),
    ],
)
def test_an_artifact_needs_a_name_and_a_sha256(name, digest, message):
    with pytest.raises(IntegrityError, match=message):
        Artifact(name, digest)
    with pytest.raises(IntegrityError, match="expected sha256"):
        Artifact.from_dict({"name": "x", "digest": {"md5": hexof("m")}})


def test_recording_is_idempotent_by_content(log: ProvenanceLog, key: SigningKey):
    first = log.record(statement())
    assert first.created
    again = log.record(statement(produced_at="2026-11-16T08:00:00.000000+00:00"))
    assert not again.created
    assert again.statement_digest == first.statement_digest
    assert again.statement.produced_at == first.statement.produced_at  # the first one counts
    assert log.db.query("SELECT count(*) FROM provenance_statements") == [(1,)]
    rows = log.indexed(period="2026-11")
    assert [(r.stage, r.statement_digest, r.envelope_key, r.key_id) for r in rows] == [
        ("train", first.statement_digest, first.envelope_key, key.public_key.key_id)
    ]
    assert {a.name for a in rows[0].subjects} == {"receipt:job-1", "model:job-1"}
    # content-addressed: the object's key names the digest of the signed statement bytes
    stored = json.loads(log.store.get_bytes(first.envelope_key))
    assert first.envelope_key == f"provenance/2026-11/train/{first.statement_digest}.dsse.json"
    assert sha256_hex(base64.b64decode(stored["payload"])) == first.statement_digest


def test_different_content_is_a_second_statement_and_producers_are_found_by_subject(log: ProvenanceLog):
    log.record(statement())
    other = statement(subjects=(Artifact("receipt:job-1", hexof("another receipt")),))
    log.record(other)
    producers = log.producers("receipt:job-1")
    found = sorted(a.digest for p in producers for a in p.subjects if a.name == "receipt:job-1")
    assert found == sorted([hexof("receipt"), hexof("another receipt")])
    assert log.producers("receipt:job-2") == []
    loaded, _ = log.load(producers[0])
    assert loaded.subject("receipt:job-1") is not None


def test_walk_order_is_settle_first(log: ProvenanceLog):
    for stage in ("ingest", "train", "settle", "value", "withdraw"):
        log.record(statement(stage, parameters={"stage": stage}))
    assert [r.stage for r in log.indexed(period="2026-11")] == [
        "settle",
        "value",
        "train",
        "withdraw",
        "ingest",
    ]


def test_a_read_only_log_never_signs(memory_db: ExchangeDB, tmp_path: Path):
    reader = ProvenanceLog(memory_db, LocalObjectStore(tmp_path / "store"))
    with pytest.raises(ConfigError, match="without the stage key"):
        reader.record(statement())


def test_the_stage_key_is_its_own_file_and_the_audit_never_creates_it(settings: Settings):
    with pytest.raises(ConfigError, match="no stage provenance key"):
        stage_public_key(settings.keys_dir)
    created = load_stage_key(settings.keys_dir)
    assert (settings.keys_dir / "provenance.pem").is_file()
    assert stage_public_key(settings.keys_dir) == created.public_key
    assert load_stage_key(settings.keys_dir).public_key == created.public_key


digests = st.binary(min_size=1, max_size=8).map(sha256_hex)


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    subject_digests=st.lists(digests, min_size=1, max_size=4, unique=True),
    moment=st.integers(min_value=0, max_value=10**9),
    flip=st.integers(min_value=0, max_value=3),
)
def test_the_binding_ignores_time_and_order_and_sees_every_digest(subject_digests, moment, flip):
    subjects = [Artifact(f"out:{i}", d) for i, d in enumerate(subject_digests)]
    when = f"2026-11-01T00:00:00.{moment % 10**6:06d}+00:00"
    base = statement(subjects=tuple(subjects))
    shuffled = statement(subjects=tuple(reversed(subjects)), produced_at=when)
    assert shuffled.binding_digest == base.binding_digest
    assert canonical_json(shuffled.statement()["subject"]) == canonical_json(base.statement()["subject"])
    changed = list(subjects)
    index = flip % len(changed)
    changed[index] = Artifact(changed[index].name, sha256_hex(changed[index].digest.encode()))
    assert statement(subjects=tuple(changed)).binding_digest != base.binding_digest
