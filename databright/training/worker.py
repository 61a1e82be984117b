"""``WorkerProcess``: one attested session in its own operating-system process.

The parent (a provider's host agent, a flow task, a test) talks to a child process over a pipe.
The child makes its Ed25519 session key itself; only the public half ever crosses the pipe, so the
key that signs receipts exists in exactly one process — the one whose code was measured. The child:

* ``attest(task, nonce)`` — measures ``enclave_tasks/<task>`` itself, binds its session key and the
  verifier's nonce into the report data (``binding_report_data``) and asks its attester for evidence;
* ``publish_kex(result_id)`` — after the verifier appraised the evidence (``result_id`` names its
  result), makes the session's X25519 key pair (``KexKeyPair``; the private half never leaves the
  child) and returns its public half signed by the session key, for ``KeyService.release``;
* ``run(spec)`` — re-measures the task, refuses it if it changed since attestation (or was never
  attested), decrypts the sealed shards with the data keys released to this session into a private
  folder (``open_job_data``: digests checked before anything trains; a plain spec naming
  plaintext files is refused), runs ``run_job`` on those copies, removes them, and signs the
  receipt, chaining it to the previous one of the session (``sequence`` counts from 0;
  ``previous_receipt_digest`` is ``None`` for the first);
* ``value(spec)`` — the same checks for a ``ValueSpec`` (a value task such as ``knn_shapley``):
  values the records of a completed job and signs a valuation receipt, in a second chain of the
  session (``value_sequence``) so usage and valuation receipts each stay gap-free.

Workers never open the exchange database: they receive sealed shards, wrapped data keys and file
paths, and return signed receipts.
Errors cross the pipe as text: a ``DatabrightError`` raised in the child is raised again in the
parent as the same class, message and context, plus ``context['worker_traceback']``;
any other failure, a child that dies, or one that does not answer in time becomes a
``TrainingError`` whose message carries what is known (traceback or exit code). The parent polls
with a timeout, so a dead or stuck child never hangs it.
"""

from __future__ import annotations

import multiprocessing
import pickle
import tempfile
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright import errors
from databright.errors import DatabrightError, TrainingError
from databright.training.spec import JobOutcome, JobSpec

if TYPE_CHECKING:
    from databright.training.value_job import ValueOutcome, ValueSpec

AttesterFactory = Callable[[Path, dict[str, Any]], Any]
_POLL_S = 0.05


def simulated_attester(platform_key_path: Path, endorsement: dict[str, Any]) -> Any:
    """The default attester: the simulated backend, rebuilt in the child from its key file."""
    from databright.trust.simulated import SimulatedAttester

    return SimulatedAttester.from_files(platform_key_path, endorsement)


class _Session:
    """Everything the child holds: session key, attester, attested measurements, receipt chain."""

    def __init__(
        self,
        provider_id: str,
        platform_key_path: Path,
        endorsement: dict[str, Any],
        enclave_tasks_dir: Path,
        attester_factory: AttesterFactory,
    ) -> None:
        from databright.crypto import SigningKey

        self.provider_id = provider_id
        self.enclave_tasks_dir = enclave_tasks_dir
        self.attester = attester_factory(platform_key_path, endorsement)
        self.key = SigningKey.generate()
        self.attested: dict[str, str] = {}
        self.kex: dict[str, Any] = {}  # attestation result id -> KexKeyPair
        self.sequence = 0
        self.previous_receipt_digest: str | None = None
        self.value_sequence = 0
        self.previous_valuation_digest: str | None = None

    def _measure(self, task: str) -> tuple[Path, str]:
        from databright.trust.measurement import find_task, measure_task

        path = find_task(self.enclave_tasks_dir, task)
        return path, measure_task(path)

    def attest(self, task: str, nonce: bytes) -> dict[str, Any]:
        from databright.training.tasks import task_identity
        from databright.trust.evidence import binding_report_data
        from databright.trust.measurement import load_task_config

        if not isinstance(nonce, bytes) or not nonce:
            raise TrainingError(f"nonce {nonce!r} must be non-empty bytes issued by the verifier")
        path, measurement = self._measure(task)
        identity = task_identity(load_task_config(path), path)
        evidence = self.attester.evidence(
            measurement,
            identity.signer_id,
            identity.product_id,
            identity.svn,
            binding_report_data(self.key.public_key, nonce),
        )
        self.attested[task] = measurement
        return dict(evidence)

    def publish_kex(self, result_id: str) -> dict[str, Any]:
        from databright.trust.kex import KexKeyPair

        if not isinstance(result_id, str) or not result_id:
            raise TrainingError(f"result id {result_id!r} must name the attestation result of this session")
        if not self.attested:
            raise TrainingError(
                "this session has not attested yet; attest a task and have the verifier appraise the "
                "evidence before publishing a key-exchange key"
            )
        pair = self.kex.setdefault(result_id, KexKeyPair.generate())
        return pair.publish(self.key, result_id)

    def _admit(self, spec: JobSpec, what: str) -> tuple[str, Any]:
        """The task's measurement and the session's key-exchange pair for ``spec``, or the reason the
        session refuses it: another provider's job, a task not attested here or changed since, plain
        data files, or no key-exchange key published under the job's attestation result."""
        if spec.provider_id != self.provider_id:
            raise TrainingError(
                f"{what} {spec.job_id} is for provider {spec.provider_id!r}, but this worker is "
                f"{self.provider_id!r}; send it to the allocated provider's worker"
            )
        attested = self.attested.get(spec.task)
        if attested is None:
            raise TrainingError(
                f"task {spec.task!r} has not been attested in this session; call attest({spec.task!r}, "
                "nonce) and have the verifier appraise the evidence before running jobs"
            )
        _, measurement = self._measure(spec.task)
        if measurement != attested:
            raise TrainingError(
                f"task {spec.task!r} changed since it was attested (measurement {attested[:16]}… is now "
                f"{measurement[:16]}…); attest it again and get a new attestation result"
            )
        if not spec.sealed:
            raise TrainingError(
                f"{what} {spec.job_id} names plaintext data files; this worker reads only sealed shards "
                "with the data keys released to its session — build the spec with shards and key_release"
            )
        kex = self.kex.get(spec.attestation_result_id)
        if kex is None:
            raise TrainingError(
                f"{what} {spec.job_id} is under attestation result {spec.attestation_result_id}, for which "
                "this session published no key-exchange key; call publish_kex(result_id), ask for a release"
            )
        return measurement, kex

    def run(self, spec: JobSpec) -> JobOutcome:
        from databright.training.runner import open_job_data, run_job
        from databright.trust.receipts import receipt_digest

        if not isinstance(spec, JobSpec):
            raise TrainingError(f"run expects a JobSpec, got {type(spec).__name__}")
        measurement, kex = self._admit(spec, "job")
        # Private to this process's user (mkdtemp makes it 0700) and gone when the job ends.
        with tempfile.TemporaryDirectory(prefix="databright-shards-") as private:
            opened = open_job_data(spec, kex, Path(private))
            outcome = run_job(
                opened,
                self.key,
                sequence=self.sequence,
                previous_receipt_digest=self.previous_receipt_digest,
                measurement=measurement,
                enclave_tasks_dir=self.enclave_tasks_dir,
            )
        # The chain only advances for receipts actually issued, so a failed job leaves no gap.
        self.sequence += 1
        self.previous_receipt_digest = receipt_digest(outcome.receipt_envelope)
        return outcome

    def value(self, spec: ValueSpec) -> ValueOutcome:
        """Run a ``ValueSpec``: value a completed job's records and sign a valuation receipt, chained
        in the session's own valuation chain (separate from its usage receipts)."""
        import dataclasses

        from databright.training.runner import open_job_data
        from databright.training.value_job import ValueSpec, run_value
        from databright.trust.valuation_receipts import valuation_receipt_digest

        if not isinstance(spec, ValueSpec):
            raise TrainingError(f"value expects a ValueSpec, got {type(spec).__name__}")
        measurement, kex = self._admit(spec.data, "value job for")
        with tempfile.TemporaryDirectory(prefix="databright-shards-") as private:
            opened = dataclasses.replace(spec, data=open_job_data(spec.data, kex, Path(private)))
            outcome = run_value(
                opened,
                self.key,
                sequence=self.value_sequence,
                previous_receipt_digest=self.previous_valuation_digest,
                measurement=measurement,
                enclave_tasks_dir=self.enclave_tasks_dir,
            )
        self.value_sequence += 1
        self.previous_valuation_digest = valuation_receipt_digest(outcome.receipt_envelope)
        return outcome


def failure_reply(exc: BaseException) -> tuple[str, str, str, str, dict[str, Any]]:
    """An exception as its class name, message, traceback text and picklable context."""
    message = exc.message if isinstance(exc, DatabrightError) else str(exc)
    context: dict[str, Any] = {}
    for key, value in (exc.context if isinstance(exc, DatabrightError) else {}).items():
        try:
            pickle.dumps(value)
        except Exception:
            value = repr(value)  # an unpicklable context object still says what it was
        context[key] = value
    return ("error", type(exc).__name__, message, traceback.format_exc(), context)


def _child_main(
    conn: Connection,
    provider_id: str,
    platform_key_path: str,
    endorsement: dict[str, Any],
    enclave_tasks_dir: str,
    attester_factory: AttesterFactory,
) -> None:
    """Entry point of the child process: set up the session, then serve commands until told to stop."""
    try:
        session = _Session(
            provider_id, Path(platform_key_path), endorsement, Path(enclave_tasks_dir), attester_factory
        )
    except BaseException as exc:
        conn.send(failure_reply(exc))
        conn.close()
        return
    conn.send(("ok", session.key.public_key.hex))
    while True:
        try:
            command, args = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away; nothing is left to answer
        if command == "stop":
            conn.send(("ok", None))
            conn.close()
            return
        try:
            if command == "attest":
                result: Any = session.attest(*args)
            elif command == "kex":
                result = session.publish_kex(*args)
            elif command == "run":
                result = session.run(*args)
            elif command == "value":
                result = session.value(*args)
            else:
                raise TrainingError(f"unknown worker command {command!r}; use attest, kex, run, value, stop")
        except (Exception, SystemExit) as exc:
            # SystemExit too: task code calling sys.exit() is a failed job, not a reason to die.
            conn.send(failure_reply(exc))
        else:
            conn.send(("ok", result))


def rebuild_error(
    provider_id: str, command: str, name: str, message: str, tb: str, context: dict[str, Any]
) -> DatabrightError:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, DatabrightError):
        # Built without the subclass constructor (AttestationError takes a code first); the child
        # already formatted the full message, and its context travels with it.
        err = cls.__new__(cls)
        DatabrightError.__init__(
            err, message, **{**context, "worker_traceback": tb, "provider_id": provider_id}
        )
        if "code" in context:
            err.code = context["code"]  # type: ignore[attr-defined]
        return err
    return TrainingError(
        f"worker {provider_id}: {command} failed inside the worker with {name}: {message}\n"
        f"--- worker traceback ---\n{tb}",
        worker_traceback=tb,
        provider_id=provider_id,
    )


class WorkerProcess:
    """A trusted worker in a child process (``spawn``), holding one session key; see the module doc.

    ``attester_factory(platform_key_path, endorsement)`` builds the attester inside the child; it
    must be a module-level function (it is pickled by name). The default is the simulated backend.
    """

    def __init__(
        self,
        provider_id: str,
        platform_key_path: Path,
        endorsement: dict[str, Any],
        enclave_tasks_dir: Path,
        *,
        attester_factory: AttesterFactory = simulated_attester,
        start_timeout_s: float = 120.0,
        call_timeout_s: float = 120.0,
        run_timeout_s: float = 3600.0,
    ) -> None:
        if not isinstance(provider_id, str) or not provider_id:
            raise TrainingError(f"provider_id {provider_id!r} must be a non-empty string")
        self.provider_id = provider_id
        self.platform_key_path = Path(platform_key_path).resolve()
        self.endorsement = endorsement
        self.enclave_tasks_dir = Path(enclave_tasks_dir).resolve()
        self.attester_factory = attester_factory
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self.run_timeout_s = run_timeout_s
        self.session_public_key: str | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        key = self.session_public_key[:16] + "…" if self.session_public_key else None
        return f"WorkerProcess(provider_id={self.provider_id!r}, {state}, session_key={key})"

    def is_alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (an operator stops a stuck worker by it)."""
        return self._process.pid if self._process is not None else None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> str:
        """Start the child; return its session public key (hex)."""
        if self._process is not None:
            raise TrainingError(
                f"worker {self.provider_id} is already started; stop it before starting again"
            )
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=_child_main,
            args=(
                child,
                self.provider_id,
                str(self.platform_key_path),
                self.endorsement,
                str(self.enclave_tasks_dir),
                self.attester_factory,
            ),
            name=f"databright-worker-{self.provider_id}",
            daemon=True,
        )
        process.start()
        child.close()  # the child holds its own end; keeping ours would hide its death from recv
        self._process, self._conn = process, parent
        public_key = self._receive("start", self.start_timeout_s)
        if not isinstance(public_key, str):
            self._kill()
            raise TrainingError(
                f"worker {self.provider_id} started with a malformed session key {public_key!r}"
            )
        self.session_public_key = public_key
        return public_key

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit and wait for it; kill it if it does not. Safe to call twice."""
        process, conn = self._process, self._conn
        if process is None or conn is None:
            return
        try:
            if process.is_alive():
                conn.send(("stop", ()))
                self._receive("stop", timeout_s)
                process.join(timeout_s)
        except (DatabrightError, OSError):
            pass  # a child that cannot stop cleanly is killed below
        finally:
            self._kill()

    def _kill(self) -> None:
        process, conn = self._process, self._conn
        self._process, self._conn = None, None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(5.0)
            if not process.is_alive():
                process.close()
        if conn is not None:
            conn.close()

    def __enter__(self) -> WorkerProcess:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- commands ------------------------------------------------------------------------------
    def attest(self, task: str, nonce: bytes) -> dict[str, Any]:
        """Evidence for ``task`` binding this session's key to ``nonce`` (from the verifier)."""
        result = self._call("attest", (task, nonce), self.call_timeout_s)
        assert isinstance(result, dict)
        return result

    def publish_kex(self, result_id: str) -> dict[str, Any]:
        """The session's X25519 key, signed by its session key for attestation result ``result_id``."""
        result = self._call("kex", (result_id,), self.call_timeout_s)
        assert isinstance(result, dict)
        return result

    def run(self, spec: JobSpec) -> JobOutcome:
        """Run one sealed job in the child; return its signed outcome."""
        result = self._call("run", (spec,), self.run_timeout_s)
        assert isinstance(result, JobOutcome)
        return result

    def value(self, spec: ValueSpec) -> ValueOutcome:
        """Run one sealed value job in the child; return its signed valuation outcome."""
        from databright.training.value_job import ValueOutcome

        result = self._call("value", (spec,), self.run_timeout_s)
        assert isinstance(result, ValueOutcome)
        return result

    def _call(self, command: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        if self._conn is None or not self.is_alive():
            raise TrainingError(
                f"worker {self.provider_id} is not running; start() it (or a new WorkerProcess) first"
            )
        try:
            self._conn.send((command, args))
        except (OSError, ValueError) as exc:
            self._kill()
            raise TrainingError(
                f"worker {self.provider_id}: cannot send {command!r} to the worker ({exc})"
            ) from exc
        return self._receive(command, timeout_s)

    def _receive(self, command: str, timeout_s: float) -> Any:
        process, conn = self._process, self._conn
        assert process is not None and conn is not None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if conn.poll(_POLL_S):
                    message = conn.recv()
                    break
            except (EOFError, OSError):
                process.join(1.0)
                code = process.exitcode
                self._kill()
                raise TrainingError(
                    f"worker {self.provider_id} died during {command!r} (exit code {code}) without "
                    "answering; see its stderr, then start a new worker"
                ) from None
            if not process.is_alive():
                if conn.poll(0):  # it may have answered just before exiting
                    continue
                code = process.exitcode
                self._kill()
                raise TrainingError(
                    f"worker {self.provider_id} crashed during {command!r} (exit code {code}) without "
                    "answering; see its stderr, then start a new worker"
                )
            if time.monotonic() > deadline:
                self._kill()
                raise TrainingError(
                    f"worker {self.provider_id} did not answer {command!r} within {timeout_s:g} s and was "
                    "killed; raise the timeout for large jobs or check the worker host"
                )
        if message[0] == "ok":
            return message[1]
        _, name, text, tb, context = message
        error = rebuild_error(self.provider_id, command, name, text, tb, context)
        if command == "start":
            self._kill()
        raise error
