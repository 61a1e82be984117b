"""Timing helper shared by the benchmarks: wall-clock runs of one callable."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Run ``fn`` ``repeats`` times; the wall-clock seconds of each run and the last result."""
    runs, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - started)
    return runs, out
