"""Fixtures for the datasets tests: the tabular-v1 contract, a small mixed schema, CSV writers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from databright.config import Settings
from databright.datasets import Column, Contract, Schema, load_contract

HEADER = ",".join([*(f"f{i}" for i in range(8)), "label"])


@pytest.fixture
def tabular(settings: Settings) -> Contract:
    return load_contract(settings.contracts_dir, "tabular-v1")


@pytest.fixture(scope="session")
def mixed_schema() -> Schema:
    """One column of each dtype, all nullable: what the canonical encoding must handle."""
    return Schema(
        columns=(Column("n", "int", True), Column("x", "float", True), Column("s", "string", True)),
        features=("n", "x"),
        label="s",
    )


@pytest.fixture
def clean_rows(rng: np.random.Generator) -> Callable[[int], list[str]]:
    """``clean_rows(n)``: n valid tabular-v1 CSV lines (no header), four decimals like the demo's."""

    def rows(n: int) -> list[str]:
        x = rng.normal(0.0, 5.0, size=(n, 8)).round(4)
        y = rng.integers(0, 2, size=n)
        return [",".join([*(f"{v:.4f}" for v in row), str(label)]) for row, label in zip(x, y, strict=True)]

    return rows


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[[str, Sequence[str]], Path]:
    """Write ``tmp_path/<name>`` with the tabular-v1 header and the given data lines."""

    def write(name: str, lines: Sequence[str], header: str = HEADER) -> Path:
        path = tmp_path / name
        path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
        return path

    return write
