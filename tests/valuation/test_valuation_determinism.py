"""Determinism: same inputs, bit-identical values and digest, in this process and a fresh one;
library versions recorded in the result and bound by its digest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from databright.errors import ValuationError
from databright.valuation.result import ValuationResult, library_versions

# Builds the same inputs from a seed and prints digests and exact float bits; run here and in a
# fresh interpreter, which shares no state (caches, RNG, thread pools) with this one.
SCRIPT = """
import json, numpy as np
from databright.valuation.knn_shapley import KNNShapley
from databright.valuation.owners import RecordGroups, owner_values
from databright.valuation.robust import ReplicationRobust

def compute():
    rng = np.random.default_rng(4242)
    x = rng.normal(size=(400, 6)); x[::9] = x[3]
    y = rng.integers(0, 3, size=400)
    xv = rng.normal(size=(61, 6)); yv = rng.integers(0, 3, size=61)
    ids = [f"r{i:03d}" for i in range(400)]
    owners = [("ann", "bob", "cat")[i % 3] for i in range(400)]
    groups = RecordGroups(ids, owners, [ids[::9][:5], ids[2:40:13]])
    plain = KNNShapley(k=5).valuate(x, y, xv, yv, record_ids=ids)
    robust = ReplicationRobust(KNNShapley(k=5), groups).valuate(x, y, xv, yv)
    return {
        "plain": plain.digest, "robust": robust.digest,
        "values": [v.hex() for v in robust.values.tolist()],
        "owners": {o: v.hex() for o, v in owner_values(robust, groups).values.items()},
        "versions": robust.library_versions,
    }
"""


def run_here() -> dict:
    namespace: dict = {}
    exec(SCRIPT, namespace)
    return json.loads(json.dumps(namespace["compute"]()))


def test_a_fresh_process_gives_bit_identical_values_and_digests() -> None:
    code = SCRIPT + "\nprint(json.dumps(compute()))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    there = json.loads(out.stdout)
    here = run_here()
    assert here == there
    assert here == run_here()
    assert here["plain"] != here["robust"]


def test_results_record_library_versions() -> None:
    result = ValuationResult(method="m", params={}, seed=None, input_digests={}, values=[0.5])
    assert result.library_versions == library_versions()
    assert result.library_versions["numpy"] == np.__version__
    assert set(result.library_versions) == {"numpy", "python"}
    assert result.summary()["library_versions"] == result.library_versions
    other = ValuationResult(
        method="m", params={}, seed=None, input_digests={}, values=[0.5],
        library_versions={**library_versions(), "numpy": "0.0.1"},
    )  # fmt: skip
    # Another stack may round differently, so it is another result.
    assert other.digest != result.digest


def test_torch_version_is_read_without_importing_torch() -> None:
    code = (
        "import sys, json; from databright.valuation.result import library_versions; "
        "v = library_versions('torch'); print(json.dumps([v['torch'], 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    version, imported = json.loads(out.stdout)
    assert version and imported is False


@pytest.mark.parametrize(
    ("versions", "fragment"),
    [({"numpy": 2}, "version strings"), ({"": "1.0"}, "version strings")],
)
def test_bad_library_versions_are_refused(versions, fragment: str) -> None:
    with pytest.raises(ValuationError, match=fragment):
        ValuationResult(
            method="m", params={}, seed=None, input_digests={}, values=[0.5], library_versions=versions
        )


def test_unknown_library_is_refused() -> None:
    with pytest.raises(ValuationError, match="not installed"):
        library_versions("no-such-distribution-databright")
    with pytest.raises(ValuationError, match="distribution name"):
        library_versions("")
