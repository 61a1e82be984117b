"""Fixtures for the training tests: a dataset version on disk (see ``training_fixtures``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_fixtures import JobData, build_job_data


@pytest.fixture
def job_data(tmp_path: Path) -> JobData:
    return build_job_data(tmp_path)
