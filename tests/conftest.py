"""Shared fixtures: a seeded RNG, a throwaway home folder, and the in-memory exchange database."""

from __future__ import annotations

import numpy as np
import pytest

from databright.config import Settings
from databright.db import ExchangeDB


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20181)


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings over a fresh home folder, with the repository's contracts and policies."""
    return Settings(home=tmp_path / "home", period="2026-11").ensure_dirs()


@pytest.fixture
def memory_db() -> ExchangeDB:
    """The in-memory backend: the same schema and SQL as the file, nothing on disk."""
    return ExchangeDB(None)


@pytest.fixture
def file_db(settings: Settings) -> ExchangeDB:
    return ExchangeDB(settings.db_path)
