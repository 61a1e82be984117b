"""The simulated backend: vendor root, platform provisioning, and the attester a worker runs."""

from __future__ import annotations

import base64
import datetime as dt
import json
import pickle

import pytest
from trust_testkit import MEASUREMENT, NOW, flip_payload_byte, flip_signature_byte, payload_len

from databright.config import Settings
from databright.crypto import PublicKey, SigningKey, open_envelope
from databright.errors import AttestationError, ConfigError, IntegrityError
from databright.trust import (
    PLATFORM_ENDORSEMENT_TYPE,
    SIM_QUOTE_TYPE,
    SimulatedAttester,
    SimulatedPlatform,
    SimulatedVendorRoot,
    binding_report_data,
    provision_platform,
)


def decoded(envelope) -> dict:
    return json.loads(base64.b64decode(envelope["payload"]))


def test_provisioning_writes_keys_and_an_endorsement_by_the_root(settings: Settings, root, platform):
    keys = settings.keys_dir
    assert (keys / "sim-vendor-root.pem").is_file()
    assert platform.key_path == keys / "sim-platform-plat-1.pem" and platform.key_path.is_file()
    body = json.loads(open_envelope(platform.endorsement, PLATFORM_ENDORSEMENT_TYPE, root.public_key))
    assert body == {
        "platform_id": "plat-1",
        "tcb_svn": 3,
        "platform_public_key": platform.public_key.hex,
        "expires_at": (NOW + dt.timedelta(days=30)).isoformat(timespec="microseconds"),
    }


def test_provisioning_again_keeps_the_keys_and_renews_the_endorsement(settings: Settings, root, platform):
    again = provision_platform(settings.keys_dir, "plat-1", tcb_svn=4, now=NOW + dt.timedelta(days=1))
    assert again.public_key == platform.public_key
    assert SimulatedVendorRoot.load_or_create(settings.keys_dir).public_key == root.public_key
    assert decoded(again.endorsement)["tcb_svn"] == 4
    assert SimulatedPlatform.load(settings.keys_dir, "plat-1") == again


def test_attester_rebuilds_from_key_path_and_endorsement_and_pickles(platform, session_key):
    attester = SimulatedAttester.from_files(platform.key_path, platform.endorsement)
    assert attester.platform == platform
    # A worker process receives the attester by pickling: only plain values cross.
    clone = pickle.loads(pickle.dumps(attester))
    nonce = b"\x07" * 32
    evidence = clone.evidence(MEASUREMENT, "signer", 5, 6, binding_report_data(session_key.public_key, nonce))
    quote = json.loads(open_envelope(evidence["quote"], SIM_QUOTE_TYPE, platform.public_key))
    assert quote == {
        "tee_type": "simulated",
        "measurement": MEASUREMENT,
        "signer_id": "signer",
        "product_id": 5,
        "svn": 6,
        "debug": False,
        "report_data": binding_report_data(session_key.public_key, nonce).hex(),
        "platform_id": "plat-1",
    }
    assert evidence["tee_type"] == "simulated"
    assert evidence["endorsement"] == platform.endorsement


def test_binding_is_sha256_of_context_key_and_nonce(session_key):
    import hashlib

    nonce = bytes(range(32))
    expected = hashlib.sha256(
        b"databright/attestation-binding/v1" + session_key.public_key.raw + nonce
    ).digest()
    assert binding_report_data(session_key.public_key, nonce) == expected
    other = SigningKey.from_seed(b"other").public_key
    assert binding_report_data(other, nonce) != expected
    assert binding_report_data(session_key.public_key, nonce[:-1] + b"\x00") != expected


@pytest.mark.parametrize("which", ["quote", "endorsement"])
def test_signatures_fail_on_every_flipped_byte(root, platform, attester, session_key, which):
    evidence = attester.evidence(
        MEASUREMENT, "s", 1, 1, binding_report_data(session_key.public_key, b"n" * 32)
    )
    envelope = evidence[which]
    key = platform.public_key if which == "quote" else root.public_key
    payload_type = SIM_QUOTE_TYPE if which == "quote" else PLATFORM_ENDORSEMENT_TYPE
    assert open_envelope(envelope, payload_type, key)
    for index in range(payload_len(envelope)):
        with pytest.raises(IntegrityError):
            open_envelope(flip_payload_byte(envelope, index), payload_type, key)
    for index in range(64):
        with pytest.raises(IntegrityError):
            open_envelope(flip_signature_byte(envelope, index), payload_type, key)


def test_endorsement_and_key_must_belong_together(settings: Settings, platform):
    other = provision_platform(settings.keys_dir, "plat-2", now=NOW)
    with pytest.raises(ConfigError, match="provision the platform again"):
        SimulatedAttester.from_files(platform.key_path, other.endorsement)
    with pytest.raises(ConfigError, match="does not exist"):
        SimulatedAttester.from_files(settings.keys_dir / "missing.pem", platform.endorsement)
    with pytest.raises(ConfigError, match="not a DSSE envelope"):
        SimulatedPlatform.from_files(platform.key_path, {"payload": "%%%"})
    with pytest.raises(ConfigError, match="provision it first"):
        SimulatedPlatform.load(settings.keys_dir, "never-made")


@pytest.mark.parametrize("platform_id", ["", "../escape", "a/b", "x" * 65, "-lead"])
def test_platform_ids_that_cannot_name_a_key_file_are_refused(settings: Settings, platform_id):
    with pytest.raises(ConfigError, match="platform id"):
        provision_platform(settings.keys_dir, platform_id, now=NOW)


def test_bad_provisioning_parameters_are_refused(settings: Settings):
    with pytest.raises(ConfigError, match="lifetime_days"):
        provision_platform(settings.keys_dir, "p", lifetime_days=0, now=NOW)
    with pytest.raises(ConfigError, match="tcb_svn"):
        provision_platform(settings.keys_dir, "p", tcb_svn=-1, now=NOW)


@pytest.mark.parametrize(
    "args",
    [
        ("AB" * 32, "s", 1, 1, b"r"),
        ("ab" * 31, "s", 1, 1, b"r"),
        (MEASUREMENT, "", 1, 1, b"r"),
        (MEASUREMENT, "s", -1, 1, b"r"),
        (MEASUREMENT, "s", 1, True, b"r"),
        (MEASUREMENT, "s", 1, 1, b""),
        (MEASUREMENT, "s", 1, 1, b"r" * 65),
        (MEASUREMENT, "s", 1, 1, "not bytes"),
    ],
)
def test_attester_refuses_bad_inputs(attester, args):
    with pytest.raises(AttestationError) as info:
        attester.evidence(*args)
    assert info.value.code == "ATTESTER_INPUT_INVALID"


def test_root_public_key_is_stable_on_disk(settings: Settings, root):
    reloaded = SimulatedVendorRoot.load_or_create(settings.keys_dir)
    assert isinstance(reloaded.public_key, PublicKey) and reloaded.public_key == root.public_key
