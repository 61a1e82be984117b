"""Fixtures for the training tests: dataset versions on disk (see ``training_fixtures``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_fixtures import IMAGE_SCHEMA, JobData, build_job_data, images


@pytest.fixture
def job_data(tmp_path: Path) -> JobData:
    return build_job_data(tmp_path)


@pytest.fixture
def image_job_data(tmp_path: Path) -> JobData:
    """The same version's shape with 8 × 8 bar images (``image-8x8-v1``) for rows."""
    return build_job_data(tmp_path, draw=images, schema=IMAGE_SCHEMA)
