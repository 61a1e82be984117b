"""Timing helpers shared by the benchmarks: wall-clock runs of one callable, and per-stage clocks."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Run ``fn`` ``repeats`` times; the wall-clock seconds of each run and the last result."""
    runs, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - started)
    return runs, out


class StageClock:
    """Wall time per stage, each call's time net of the timed calls nested inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._nested: list[float] = []

    def wrap(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._nested.append(0.0)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                inner = self._nested.pop()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner
                self.calls[stage] = self.calls.get(stage, 0) + 1
                if self._nested:
                    self._nested[-1] += elapsed

        return timed

    @contextmanager
    def patched(self, owner: Any, targets: Mapping[str, str]) -> Iterator[list[str]]:
        """Wrap ``owner.<name>`` for every ``name -> stage`` of ``targets`` that ``owner`` has, for the
        duration of the block; yields the names that were found (the rest are left out, not an error)."""
        originals = {name: getattr(owner, name) for name in targets if callable(getattr(owner, name, None))}
        for name, fn in originals.items():
            setattr(owner, name, self.wrap(fn, targets[name]))
        try:
            yield list(originals)
        finally:
            for name, fn in originals.items():
                setattr(owner, name, fn)
