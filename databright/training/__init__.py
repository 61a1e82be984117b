"""Training: the code that runs inside an attested worker, and the process that hosts it.

A guide, in the order things happen:

1. ``WorkerProcess(provider_id, platform_key_path, endorsement, enclave_tasks_dir)`` starts a child
   process that makes its own session key (``start()`` returns the public half).
2. ``attest(task, nonce)``: the child measures ``enclave_tasks/<task>`` and returns evidence whose
   report data binds its session key to the verifier's nonce.
3. ``run(JobSpec(...))``: the child runs ``run_job`` — checks every record id and the Merkle root,
   loads the task (``load_task``), trains (the task meters visits with a ``UsageMeter``), values
   every record with exact KNN-Shapley, and signs a ``UsageReceipt``. It returns a ``JobOutcome``.
4. ``stop()`` (or leave the ``with`` block).

Tasks implement ``train(x, y, config, seed, x_val=None, y_val=None) -> TrainOutput``; see
``enclave_tasks/README.md``. ``jobs`` holds the exchange's table of jobs (not used by workers).
torch is imported only inside tasks, never by this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from databright.training.meter import UsageMeter
    from databright.training.runner import load_dataset, load_validation, owner_usage, run_job, verify_records
    from databright.training.spec import JobOutcome, JobSpec
    from databright.training.tasks import EnclaveTask, TaskIdentity, TrainOutput, load_task, resolve_config
    from databright.training.worker import WorkerProcess, simulated_attester

# Names resolve on first use: ``databright.db`` imports ``databright.training.jobs`` for its DDL,
# and that must not drag in pandas, the trust package or the runner.
_EXPORTS = {
    "UsageMeter": "meter",
    "load_dataset": "runner",
    "load_validation": "runner",
    "owner_usage": "runner",
    "run_job": "runner",
    "verify_records": "runner",
    "JobOutcome": "spec",
    "JobSpec": "spec",
    "EnclaveTask": "tasks",
    "TaskIdentity": "tasks",
    "TrainOutput": "tasks",
    "load_task": "tasks",
    "resolve_config": "tasks",
    "WorkerProcess": "worker",
    "simulated_attester": "worker",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'databright.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"databright.training.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "EnclaveTask",
    "JobOutcome",
    "JobSpec",
    "TaskIdentity",
    "TrainOutput",
    "UsageMeter",
    "WorkerProcess",
    "load_dataset",
    "load_task",
    "load_validation",
    "owner_usage",
    "resolve_config",
    "run_job",
    "simulated_attester",
    "verify_records",
]
