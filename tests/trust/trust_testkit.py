"""Constants and small helpers shared by the trust tests (a plain module: conftest holds fixtures)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

# A fixed clock: every check that involves time is deterministic.
NOW = dt.datetime(2026, 11, 3, 12, 0, 0, tzinfo=dt.UTC)
TASK = "toy_task"
MEASUREMENT = "ab" * 32
SIGNER = "databright-dev"
PRODUCT = 1
SVN = 2


def flip_payload_byte(envelope: dict[str, Any], index: int, mask: int = 0x01) -> dict[str, Any]:
    """A copy of a DSSE envelope with byte ``index`` of its payload XOR-ed with ``mask``."""
    out = copy.deepcopy(envelope)
    payload = bytearray(base64.b64decode(out["payload"]))
    payload[index % len(payload)] ^= mask
    out["payload"] = base64.b64encode(bytes(payload)).decode("ascii")
    return out


def flip_signature_byte(envelope: dict[str, Any], index: int, mask: int = 0x01) -> dict[str, Any]:
    out = copy.deepcopy(envelope)
    sig = bytearray(base64.b64decode(out["signatures"][0]["sig"]))
    sig[index % len(sig)] ^= mask
    out["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode("ascii")
    return out


def payload_len(envelope: dict[str, Any]) -> int:
    return len(base64.b64decode(envelope["payload"]))
