"""Data-parallel training: which rows each worker of a job reads, and how their gradients meet.

A job on ``W`` workers splits the released version's ``n`` rows (dataset order, after withdrawals)
into ``W`` contiguous shards: worker ``k`` reads rows ``[k·n // W, (k+1)·n // W)`` (``shard_bounds``)
and its usage receipt covers exactly those records. Every worker draws the same global permutation
from the job's seed, so each step's global minibatch is the one a single worker would take; a worker
computes the *summed* loss gradient over the rows of that minibatch that lie in its shard (possibly
none), the sums are all-reduced with ``torch.distributed`` and divided by the global minibatch size.
That is the single-worker update up to the order of floating-point additions, so a two-worker model
matches the one-worker model to about 1e-12 relative (``tests/training/test_training_data_parallel``
states the tolerance it holds to). Feature standardisation is global the same way: the shards'
column sums, then their squared deviations, are all-reduced.

The transport is gloo over TCP on CPU (a job's workers rendezvous at the ``tcp://host:port`` the
exchange chose for the job); NCCL would be the backend for GPU tensors, which no task here uses yet.
A worker that dies mid-job leaves the others blocked in an all-reduce until the group's timeout,
after which they fail too: a data-parallel job completes on every worker or on none.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from databright.errors import TrainingError

#: How long a worker waits in a collective for the others before the job fails.
DEFAULT_TIMEOUT_S = 60.0


def shard_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """The half-open range of dataset rows that worker ``rank`` of ``world_size`` reads."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise TrainingError(f"world size {world_size!r} must be a positive integer (the job's worker count)")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise TrainingError(f"rank {rank!r} must be an integer in 0..{world_size - 1}")
    if rows < world_size:
        raise TrainingError(
            f"a dataset of {rows} rows cannot be split across {world_size} workers; train on fewer workers"
        )
    return rank * rows // world_size, (rank + 1) * rows // world_size


class DataShard:
    """What a task is given when it trains on one shard of a data-parallel job.

    ``x`` and ``y`` handed to the task hold only this shard's rows; ``global_rows`` is the whole
    dataset's row count, ``start`` the global index of the shard's first row. ``reduce`` sums a
    float64 array across the job's workers (in place) — ``GlooGroup.reduce`` in a worker, or any
    function with the same contract in a test.
    """

    def __init__(
        self, rank: int, world_size: int, global_rows: int, reduce: Any, *, start: int | None = None
    ) -> None:
        first, stop = shard_bounds(global_rows, rank, world_size)
        if start is not None and start != first:
            raise TrainingError(f"shard {rank}/{world_size} starts at row {first}, not {start}")
        self.rank, self.world_size, self.global_rows = rank, world_size, global_rows
        self.start, self.stop = first, stop
        self._reduce = reduce

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return (
            f"DataShard(rank={self.rank}, world_size={self.world_size}, rows {self.start}..{self.stop} "
            f"of {self.global_rows})"
        )

    def local(self, global_batch: np.ndarray) -> np.ndarray:
        """The rows of ``global_batch`` (global indices) that lie in this shard, as local positions,
        in the minibatch's order."""
        inside = global_batch[(global_batch >= self.start) & (global_batch < self.stop)]
        return inside - self.start

    def all_reduce_sum(self, values: Any) -> np.ndarray:
        """The element-wise sum of ``values`` over every worker of the job (a new float64 array)."""
        array = np.array(values, dtype=np.float64, copy=True, order="C")
        self._reduce(array)
        return array

    def all_reduce_(self, tensors: Sequence[Any]) -> None:
        """Sum torch tensors across the workers, in place, in one collective call."""
        flat = np.concatenate([t.detach().reshape(-1).numpy() for t in tensors]) if tensors else None
        if flat is None:
            return
        self._reduce(flat)
        offset = 0
        for tensor in tensors:
            size = tensor.numel()
            tensor.detach().reshape(-1).copy_(_torch().from_numpy(flat[offset : offset + size]))
            offset += size


def _torch() -> Any:
    import torch

    return torch


@dataclass(frozen=True)
class Rendezvous:
    """Where a data-parallel job's workers meet: ``tcp://host:port``, rank 0 hosting the store."""

    address: str
    rank: int
    world_size: int
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address.startswith("tcp://"):
            raise TrainingError(
                f"rendezvous address {self.address!r} must be tcp://host:port; the exchange picks a free "
                "port for each job"
            )
        shard_bounds(self.world_size, self.rank, self.world_size)
        if not self.timeout_s > 0:
            raise TrainingError(f"rendezvous timeout {self.timeout_s!r} must be a positive number of seconds")


class GlooGroup:
    """A ``torch.distributed`` gloo process group for one job, joined on enter and left on exit."""

    def __init__(self, rendezvous: Rendezvous) -> None:
        self.rendezvous = rendezvous

    def __enter__(self) -> GlooGroup:
        import torch.distributed as dist

        if dist.is_initialized():
            raise TrainingError("this worker is already in a process group; one data-parallel job at a time")
        try:
            dist.init_process_group(
                "gloo",
                init_method=self.rendezvous.address,
                rank=self.rendezvous.rank,
                world_size=self.rendezvous.world_size,
                timeout=dt.timedelta(seconds=self.rendezvous.timeout_s),
            )
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(
                f"rank {self.rendezvous.rank} could not join the job's workers at {self.rendezvous.address} "
                f"within {self.rendezvous.timeout_s:g} s ({exc}); every allocated worker must start the job"
            ) from exc
        return self

    def reduce(self, array: np.ndarray) -> None:
        import torch
        import torch.distributed as dist

        try:
            dist.all_reduce(torch.from_numpy(array), op=dist.ReduceOp.SUM)
        except RuntimeError as exc:
            raise TrainingError(
                f"rank {self.rendezvous.rank}: a gradient all-reduce failed ({exc}); another worker of the "
                "job stopped, so the job fails on every worker"
            ) from exc

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def standardisation(x: np.ndarray, shard: DataShard | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of the whole training set — of ``x`` alone, or summed
    over every shard of a data-parallel job — with a constant column's deviation set to 1 (it
    carries no information; dividing by 1 keeps it at 0 instead of NaN)."""
    if shard is None:
        mean, std = x.mean(axis=0), x.std(axis=0)
    else:
        if shard.rows != x.shape[0]:
            raise TrainingError(f"{shard!r} holds {shard.rows} rows, but the task was given {x.shape[0]}")
        mean = shard.all_reduce_sum(x.sum(axis=0)) / shard.global_rows
        std = np.sqrt(shard.all_reduce_sum(((x - mean) ** 2).sum(axis=0)) / shard.global_rows)
    return mean, np.where(std > 0, std, 1.0)
