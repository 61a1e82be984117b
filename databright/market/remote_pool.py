"""``RemotePool``: the provider agents serving a work pool, as a train run sees them.

It has ``LocalPool``'s interface (``offers``, ``member``, ``alive``, ``retire``, ``run``, ``value``),
so ``training.service`` allocates and runs parts on either. The difference is who owns the workers:
a ``LocalPool`` starts and attests them for one run; here each provider's agent
(``databright worker start``, ``market.agent``) started and attested its own worker, opened its
offer and keeps it alive, and the run only reads the agents' records, checks their offers and
attestation results in the exchange database, and sends each part to its agent.

Entering the pool first withdraws every *lost* offer of the pool: one whose agent's record is older
than ``stale_after_s`` (missed heartbeats) or whose agent process is gone. Leaving it withdraws
nothing: the offers belong to the agents.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Client
from types import TracebackType
from typing import TYPE_CHECKING, Any

from databright.config import Settings
from databright.db import ExchangeDB
from databright.errors import MarketError, TrainingError
from databright.market.agent import AgentRecord, pool_dir
from databright.market.offers import Offer, list_offers, list_providers, withdraw_offer
from databright.market.pool import PoolMember
from databright.processes import pid_alive
from databright.training.spec import JobOutcome, JobSpec
from databright.training.worker import rebuild_error
from databright.trust import load_verifier_key
from databright.trust.verifier import load_result

if TYPE_CHECKING:
    from databright.training.value_job import ValueOutcome, ValueSpec

#: An agent that missed this many heartbeats in a row is lost.
MISSED_HEARTBEATS = 5


def agent_records(settings: Settings, pool: str) -> list[AgentRecord]:
    """Every record in the pool's folder, by provider id."""
    folder = pool_dir(settings, pool)
    return [AgentRecord.load(path) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def lost(record: AgentRecord, stale_after_s: float | None = None) -> str | None:
    """Why the agent behind ``record`` counts as lost, or ``None`` while it is alive; by default it
    is stale after ``MISSED_HEARTBEATS`` of its own heartbeat intervals."""
    if stale_after_s is None:
        stale_after_s = MISSED_HEARTBEATS * record.heartbeat_s
    if not pid_alive(record.pid):
        return f"its process {record.pid} is gone"
    age = record.age_s()
    if age > stale_after_s:
        return f"its last heartbeat was {age:.0f} s ago (more than {stale_after_s:g} s)"
    if not record.enclave_alive:
        return "its enclave session has stopped"
    return None


def withdraw_lost_offers(
    settings: Settings, db: ExchangeDB, pool: str, *, stale_after_s: float | None = None
) -> dict[str, str]:
    """Withdraw the offer of every lost agent of ``pool`` and drop its record; provider -> reason."""
    withdrawn: dict[str, str] = {}
    for record in agent_records(settings, pool):
        reason = lost(record, stale_after_s)
        if reason is not None:
            withdraw_offer(db, record.offer_id)
            if not pid_alive(record.pid):
                (pool_dir(settings, pool) / f"{record.provider_id}.json").unlink(missing_ok=True)
            withdrawn[record.provider_id] = reason
    return withdrawn


class RemotePool:
    def __init__(
        self,
        settings: Settings,
        db: ExchangeDB,
        pool: str,
        *,
        task: str,
        stale_after_s: float | None = None,
        run_timeout_s: float = 3600.0,
    ) -> None:
        self.settings, self.db, self.pool, self.task = settings, db, pool, task
        self.stale_after_s = stale_after_s
        self.run_timeout_s = run_timeout_s
        self.members: dict[str, PoolMember] = {}
        self.records: dict[str, AgentRecord] = {}
        self.lost: dict[str, str] = {}

    def __enter__(self) -> RemotePool:
        self.lost = withdraw_lost_offers(self.settings, self.db, self.pool, stale_after_s=self.stale_after_s)
        providers = {p.provider_id: p for p in list_providers(self.db)}
        offers = {o.offer_id: o for o in list_offers(self.db, status="open")}
        verifier_key = load_verifier_key(self.settings.keys_dir).public_key
        for record in agent_records(self.settings, self.pool):
            offer = offers.get(record.offer_id)
            if record.task != self.task or offer is None or record.provider_id in self.lost:
                continue
            result = load_result(self.db, verifier_key, record.attestation_result_id)
            self.members[record.provider_id] = PoolMember(
                providers[record.provider_id], offer, result, record.kex_envelope
            )
            self.records[record.provider_id] = record
        if not self.members:
            lost = "; ".join(f"{p}: {why}" for p, why in self.lost.items()) or "none"
            raise MarketError(
                f"no live agent offers task {self.task!r} on pool {self.pool!r} (lost: {lost}); start one "
                f"with `databright worker start --pool {self.pool} --task {self.task} ...`"
            )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.members.clear()
        self.records.clear()

    @property
    def offers(self) -> list[Offer]:
        return [m.offer for m in self.members.values()]

    def member(self, offer: Offer) -> PoolMember:
        for m in self.members.values():
            if m.offer.offer_id == offer.offer_id:
                return m
        raise MarketError(f"offer {offer.offer_id} is not in pool {self.pool}; choose among pool.offers")

    def alive(self, offer: Offer) -> bool:
        """Whether the agent behind ``offer`` answers and its enclave session still runs."""
        try:
            status = self._call(offer, "status", (), timeout_s=10.0)
        except TrainingError:
            return False
        return bool(status.get("enclave_alive"))

    def retire(self, offer: Offer) -> None:
        """Withdraw ``offer``: its agent lost its enclave (or went away) and gets no more work."""
        provider_id = self.member(offer).provider.provider_id
        withdraw_offer(self.db, offer.offer_id)
        self.members.pop(provider_id)
        self.records.pop(provider_id)

    def run(self, offer: Offer, spec: JobSpec) -> JobOutcome:
        result = self._call(offer, "run", (spec,), timeout_s=self.run_timeout_s)
        assert isinstance(result, JobOutcome)
        return result

    def value(self, offer: Offer, spec: ValueSpec) -> ValueOutcome:
        from databright.training.value_job import ValueOutcome

        result = self._call(offer, "value", (spec,), timeout_s=self.run_timeout_s)
        assert isinstance(result, ValueOutcome)
        return result

    def _call(self, offer: Offer, command: str, args: tuple[Any, ...], *, timeout_s: float) -> Any:
        provider_id = self.member(offer).provider.provider_id
        record = self.records[provider_id]
        try:
            conn = Client(record.address, authkey=bytes.fromhex(record.authkey))
        except (OSError, EOFError) as exc:
            raise TrainingError(
                f"the agent of {provider_id} at {record.address[0]}:{record.address[1]} does not answer "
                f"({exc}); it stopped or lost its network — its offer will be withdrawn as lost"
            ) from exc
        with conn:
            deadline = time.monotonic() + timeout_s
            try:
                conn.send((command, args))
                while not conn.poll(0.2):
                    if time.monotonic() > deadline:
                        raise TrainingError(
                            f"the agent of {provider_id} did not answer {command!r} within {timeout_s:g} s"
                        )
                message = conn.recv()
            except (OSError, EOFError) as exc:
                raise TrainingError(
                    f"the agent of {provider_id} went away during {command!r} ({exc or 'connection closed'})"
                ) from exc
        if message[0] == "ok":
            return message[1]
        _, name, text, tb, context = message
        raise rebuild_error(provider_id, command, name, text, tb, context)
