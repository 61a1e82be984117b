"""One Prefect test harness per session, and one demo period shared by the flow tests.

The period runs the real ``ingest``, ``train`` and ``settle`` flows against a temporary Prefect API,
real worker processes, a DVC repository and a DuckDB file; the tests then read what it left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from databright.config import Settings

PERIOD = "2026-11"


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture(scope="session")
def exchange_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """``DATABRIGHT_HOME`` pointed at a fresh folder for the whole session (flows read it)."""
    home = tmp_path_factory.mktemp("databright-home")
    saved = {k: os.environ.get(k) for k in ("DATABRIGHT_HOME", "DATABRIGHT_PERIOD")}
    os.environ["DATABRIGHT_HOME"] = str(home)
    os.environ["DATABRIGHT_PERIOD"] = PERIOD
    yield Settings.from_env().ensure_dirs()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def demo_period(prefect_api: None, exchange_home: Settings):
    from flows.demo import run_demo

    return run_demo(exchange_home, seed=7)
