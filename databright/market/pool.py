"""``LocalPool``: the providers' worker processes on this machine, attested and offering work.

Entering the pool starts one ``WorkerProcess`` per registered provider. Each worker makes its own
Ed25519 session key inside its process; the exchange's verifier issues a fresh nonce; the worker's
attester binds the enclave task's measurement, the session key and the nonce into evidence; the
verifier appraises it against the attestation policy; only then is the provider's offer opened.
The worker then publishes its X25519 key-exchange key signed by the attested session key
(``PoolMember.kex_envelope``): the key service wraps a job's data keys to it (``KeyService.release``).
Leaving the pool stops the workers and withdraws their offers, so no offer outlives its session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from databright.config import Settings
from databright.crypto import PublicKey
from databright.db import ExchangeDB
from databright.errors import MarketError
from databright.market.offers import Offer, Provider, open_offer, withdraw_offer
from databright.training.spec import JobOutcome, JobSpec
from databright.training.worker import WorkerProcess
from databright.trust import AttestationResult, SimulatedVerifier, provision_platform

if TYPE_CHECKING:
    from databright.training.value_job import ValueOutcome, ValueSpec


@dataclass(frozen=True)
class PoolMember:
    provider: Provider
    offer: Offer
    attestation: AttestationResult
    kex_envelope: dict[str, Any]  # the session's X25519 key, signed by its attested session key


class WorkerPool(Protocol):
    """What running a job needs of a pool: ``LocalPool`` (workers started for one run) or
    ``remote_pool.RemotePool`` (the provider agents of a work pool)."""

    @property
    def offers(self) -> list[Offer]: ...

    def member(self, offer: Offer) -> PoolMember: ...

    def alive(self, offer: Offer) -> bool: ...

    def retire(self, offer: Offer) -> None: ...

    def run(self, offer: Offer, spec: JobSpec) -> JobOutcome: ...

    def value(self, offer: Offer, spec: ValueSpec) -> ValueOutcome: ...


def attest_and_offer(
    db: ExchangeDB, verifier: SimulatedVerifier, provider: Provider, worker: WorkerProcess, task: str
) -> PoolMember:
    """Appraise a started worker's session for ``task`` and open the provider's offer under the result.

    The verifier issues a fresh nonce; the worker binds its session key and the nonce into evidence;
    only an appraised session publishes its key-exchange key, and only then is the offer opened —
    no offer without an attested session and a key to release data to.
    """
    nonce = verifier.issue_nonce()
    evidence = worker.attest(task, nonce)
    assert worker.session_public_key is not None
    result, _ = verifier.appraise(
        evidence,
        session_public_key=PublicKey.from_hex(worker.session_public_key),
        nonce=nonce,
        task=task,
        provider_id=provider.provider_id,
    )
    kex = worker.publish_kex(result.result_id)
    offer = open_offer(
        db,
        Offer(
            offer_id=f"offer-{result.result_id.removeprefix('ar-')[:16]}",
            provider_id=provider.provider_id,
            session_public_key=result.session_public_key,
            attestation_result_id=result.result_id,
            assurance=result.assurance,
            price_per_unit=provider.price_per_unit,
            capacity=provider.capacity,
            status="open",
        ),
    )
    return PoolMember(provider, offer, result, kex)


class LocalPool:
    def __init__(
        self, settings: Settings, db: ExchangeDB, providers: Sequence[Provider], *, task: str
    ) -> None:
        if not providers:
            raise MarketError(
                "no providers are registered, so the pool is empty; register one with "
                "`databright worker register` (the demo registers two)"
            )
        self.settings = settings
        self.db = db
        self.providers = list(providers)
        self.task = task
        self.members: dict[str, PoolMember] = {}
        self._workers: dict[str, WorkerProcess] = {}

    def __enter__(self) -> LocalPool:
        try:
            self._start_and_attest()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start_and_attest(self) -> None:
        for provider in self.providers:
            platform = provision_platform(self.settings.keys_dir, provider.provider_id)
            worker = WorkerProcess(
                provider.provider_id, platform.key_path, platform.endorsement, self.settings.enclave_tasks_dir
            )
            self._workers[provider.provider_id] = worker
            worker.start()  # children boot side by side; attestation below waits for each
        verifier = SimulatedVerifier.from_settings(self.settings, self.db, self.settings.object_store())
        for provider in self.providers:
            worker = self._workers[provider.provider_id]
            member = attest_and_offer(self.db, verifier, provider, worker, self.task)
            self.members[provider.provider_id] = member

    @property
    def offers(self) -> list[Offer]:
        return [m.offer for m in self.members.values()]

    def member(self, offer: Offer) -> PoolMember:
        for m in self.members.values():
            if m.offer.offer_id == offer.offer_id:
                return m
        raise MarketError(f"offer {offer.offer_id} is not in this pool; choose among pool.offers")

    def alive(self, offer: Offer) -> bool:
        """Whether the worker behind ``offer`` is still running (a killed worker's session is gone)."""
        worker = self._workers.get(self.member(offer).provider.provider_id)
        return worker is not None and worker.is_alive()

    def worker(self, offer: Offer) -> WorkerProcess:
        """The worker process behind ``offer``."""
        return self._workers[self.member(offer).provider.provider_id]

    def retire(self, offer: Offer) -> None:
        """Withdraw ``offer`` and stop its worker: a worker that died mid-job gets no more work."""
        provider_id = self.member(offer).provider.provider_id
        withdraw_offer(self.db, offer.offer_id)
        self._workers.pop(provider_id).stop()
        del self.members[provider_id]

    def run(self, offer: Offer, spec: JobSpec) -> JobOutcome:
        """Run a job on the worker behind ``offer`` (the one whose session was attested)."""
        return self._workers[self.member(offer).provider.provider_id].run(spec)

    def value(self, offer: Offer, spec: ValueSpec) -> ValueOutcome:
        """Run a value job on the worker behind ``offer`` (a pool attested for a value task)."""
        return self._workers[self.member(offer).provider.provider_id].value(spec)

    def close(self) -> None:
        for member in self.members.values():
            withdraw_offer(self.db, member.offer.offer_id)
        for worker in self._workers.values():
            worker.stop()
        self.members.clear()
        self._workers.clear()
