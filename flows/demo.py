"""One whole DataBright period on synthetic data, through the real ``ingest``, ``train`` and ``settle``
flows: what ``databright demo`` (and so ``make demo``) runs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console

from databright.config import Settings
from databright.datasets import IngestResult
from databright.datasets.synthetic import SyntheticPeriod, make_period
from databright.errors import ConfigError
from databright.ledger import deposit
from databright.market import Provider, list_offers, register_provider
from databright.money import parse_amount
from databright.settlement import Settlement
from databright.training.jobs import TrainingJob
from flows.ingest import IngestConfig, ingest_flow
from flows.settle import SettleConfig, settle_flow
from flows.train import TrainConfig, train_flow
from flows.value import ValueConfig, value_flow

DATASET = "tabular-demo"
TRAINER = "acme-labs"
PROVIDERS = (
    Provider("north-gpu", price_per_unit=3, capacity=50_000_000),
    Provider("south-cpu", price_per_unit=5, capacity=50_000_000),
)
DEPOSIT = parse_amount("25")
PAYMENT = parse_amount("10")


@dataclass(frozen=True)
class DemoReport:
    settings: Settings
    synthetic: SyntheticPeriod
    providers: tuple[Provider, ...]
    ingests: tuple[IngestResult, ...]
    job: TrainingJob
    settlement: Settlement
    seconds: dict[str, float]


def reset_home(settings: Settings) -> None:
    """Delete a previous demo's home folder — only one DataBright made (it carries the marker)."""
    home = settings.home
    if not home.exists():
        return
    if not (home / Settings.MARKER).exists() and any(home.iterdir()):
        raise ConfigError(
            f"{home} is not empty and was not made by DataBright, so --fresh will not delete it; "
            "point DATABRIGHT_HOME at a new folder"
        )
    shutil.rmtree(home)


def run_demo(
    settings: Settings, *, seed: int = 7, fresh: bool = False, console: Console | None = None
) -> DemoReport:
    console = console or Console(quiet=True)
    if fresh:
        reset_home(settings)
    settings.ensure_dirs()
    seconds: dict[str, float] = {}

    @contextmanager
    def stage(name: str) -> Iterator[list[str]]:
        """Show a spinner while the stage runs, then one line with its duration and outcome."""
        outcome: list[str] = []
        started = time.perf_counter()
        with console.status(f"[bold]{name}…"):
            yield outcome
        seconds[name] = time.perf_counter() - started
        console.print(f"[green]✓[/] [bold]{name}[/] [dim]({seconds[name]:.1f} s)[/] {' '.join(outcome)}")

    console.rule(f"[bold]DataBright demo[/] — period {settings.period}, home {settings.home}")
    with stage("synthesise contributions") as outcome:
        synthetic = make_period(settings.home / "demo-inputs", seed=seed)
        outcome.append(f"seed {seed}: alice, bob, carol + a validation file")

    db = settings.exchange_db()
    with stage("register providers and fund the trainer") as outcome:
        for provider in PROVIDERS:
            register_provider(db, provider)
        deposit(db, TRAINER, DEPOSIT, reference=f"demo-{settings.period}-{TRAINER}")
        outcome.append(f"{', '.join(p.provider_id for p in PROVIDERS)}; {TRAINER} deposits 25 DBX")

    ingests = []
    for owner, path in synthetic.contributions.items():
        with stage(f"ingest {owner}") as outcome:
            ingest = ingest_flow(IngestConfig(dataset=DATASET, owner=owner, path=str(path)))
            outcome.append(_ingest_line(ingest))
        ingests.append(ingest)

    with stage("train on the attested pool") as outcome:
        (job,) = train_flow(
            TrainConfig(
                dataset=DATASET, validation=str(synthetic.validation), payment=PAYMENT, trainer=TRAINER
            )
        )
        outcome.append(_train_line(job))
    for offer in list_offers(db):
        console.print(
            f"  [dim]pool:[/] {offer.provider_id} attested as {offer.attestation_result_id} "
            f"(session key {offer.session_public_key[:12]}…, assurance: {offer.assurance}), "
            f"{offer.price_per_unit} µDBX per work unit"
        )

    with stage("value the records in an attested value task") as outcome:
        valuations = value_flow(ValueConfig(period=settings.period))
        outcome.append(
            ", ".join(f"{v.job_id} by {v.provider_id} ({v.method}), receipt signed" for v in valuations)
        )

    with stage(f"settle {settings.period}") as outcome:
        settlement = settle_flow(SettleConfig(period=settings.period, review=False, approver="demo-auto"))
        outcome.append(f"state {settlement.state}, assurance: {settlement.assurance}")

    return DemoReport(settings, synthetic, PROVIDERS, tuple(ingests), job, settlement, seconds)


def _ingest_line(result: IngestResult) -> str:
    version = f"→ v{result.version.version}" if result.version else "→ no new version"
    return (
        f"{result.rows_received} rows: {result.accepted} accepted, {result.quarantined_rows} quarantined, "
        f"{result.duplicates_refused} duplicates refused {version}"
    )


def _train_line(job: TrainingJob) -> str:
    return (
        f"{job.job_id} on {job.provider_id} (cheapest attested offer): {job.work_units:,} work units, "
        f"receipt signed"
    )


if __name__ == "__main__":
    run_demo(Settings.from_env(), fresh=True, console=Console())
