"""``import databright`` must stay light: the heavy engines load only where they are used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "prefect", "great_expectations", "dvc")


def test_importing_the_package_leaves_heavy_engines_unloaded():
    code = (
        "import sys, json, databright, databright.config, databright.errors, databright.crypto; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_library_subpackages_import_without_torch_prefect_or_great_expectations():
    code = (
        "import sys, json; import databright.datasets, databright.trust, databright.market, "
        "databright.ledger, databright.settlement, databright.valuation, databright.training; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
