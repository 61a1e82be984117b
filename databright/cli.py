"""The ``databright`` command line: one library (or flow) call per command, rendered with rich.

Any ``DatabrightError`` is printed once as ``ErrorName: message`` and the command exits 1 — never
a traceback. Prefect is imported only by the commands that run flows, after its home folder has been
pointed inside ``DATABRIGHT_HOME``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from databright.config import Settings
from databright.errors import DatabrightError
from databright.money import format_amount, parse_amount

app = typer.Typer(help="DataBright: an exchange for training data and trusted compute.", no_args_is_help=True)
dataset_app = typer.Typer(help="Register and inspect datasets.", no_args_is_help=True)
worker_app = typer.Typer(help="Hardware providers and their attested offers.", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)
enclave_app = typer.Typer(help="Enclave tasks and their measurements.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
app.add_typer(worker_app, name="worker")
app.add_typer(ledger_app, name="ledger")
app.add_typer(enclave_app, name="enclave")

# Tables need room: when output is not a terminal (CI logs, pipes) rich would assume 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(fn: F) -> F:
    """Turn a DatabrightError into ``ErrorName: message`` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatabrightError as exc:
            err_console.print(f"[bold red]{type(exc).__name__}[/]: {exc}", markup=True, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _settings(period: str | None = None) -> Settings:
    settings = Settings.from_env()
    return (settings.with_period(period) if period else settings).ensure_dirs()


def _use_prefect(settings: Settings) -> None:
    """Point Prefect at the home folder; must run before the first ``import prefect``."""
    for key, value in settings.prefect_env().items():
        os.environ.setdefault(key, value)
    if settings.period:
        os.environ["DATABRIGHT_PERIOD"] = settings.period


def _amount(text: str) -> int:
    try:
        return parse_amount(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


# --- demo -------------------------------------------------------------------------------------


@app.command()
@reports_errors
def demo(
    fresh: Annotated[
        bool, typer.Option(help="Start from an empty home folder (removes a previous demo's)")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic period")] = 7,
    period: Annotated[str, typer.Option(help="Settlement period, YYYY-MM")] = "2026-11",
    out: Annotated[
        Path | None, typer.Option(help="Also export metrics.json, ledger.csv and statements/ here")
    ] = None,
) -> None:
    """Run one whole exchange period on synthetic data: ingest → train → settle → statements."""
    settings = _settings(period)
    _use_prefect(settings)
    from databright.render import render_earnings
    from flows.demo import run_demo

    report = run_demo(settings, seed=seed, fresh=fresh, console=console)
    render_earnings(report.ingests, report.settlement, settings.statements_dir, console)
    if out is not None:
        from databright.settlement import export_period

        written = export_period(settings.exchange_db(), report.settlement, settings.statements_dir, out)
        console.print("exported " + ", ".join(str(p) for p in written.values()))


@app.command()
@reports_errors
def synthesize(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for the contributors' CSV files and validation.csv")
    ],
    seed: Annotated[int, typer.Option(help="Seed of the synthetic period")] = 7,
) -> None:
    """Write the demo's synthetic contributions (alice, bob, carol) and validation file."""
    from databright.datasets.synthetic import make_period

    period = make_period(out_dir, seed=seed)
    for owner, path in period.contributions.items():
        console.print(f"{owner:<6} {path}")
    console.print(f"{'valid.':<6} {period.validation}")


# --- datasets ---------------------------------------------------------------------------------


@dataset_app.command("register")
@reports_errors
def dataset_register(
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file", exists=False)],
    dataset: Annotated[str, typer.Option(help="Dataset name")],
    owner: Annotated[str, typer.Option(help="Contributor id")],
    contract: Annotated[str, typer.Option(help="Data contract kind")] = "tabular-v1",
) -> None:
    """Register a file into a dataset through the ingest flow."""
    settings = _settings()
    _use_prefect(settings)
    from flows.ingest import IngestConfig, ingest_flow

    result = ingest_flow(IngestConfig(dataset=dataset, owner=owner, path=str(path), contract=contract))
    from databright.render import render_ingest

    render_ingest(result, console)


@dataset_app.command("list")
@reports_errors
def dataset_list() -> None:
    """Datasets, their latest version and owners."""
    from databright.datasets import Registry

    registry = Registry(_settings().exchange_db())
    table = Table("dataset", "contract", "version", "records", "owners (records)", "Merkle root")
    for summary in registry.list_datasets():
        latest = registry.get_version(summary.name, summary.latest_version)
        owners = ", ".join(f"{o} ({n})" for o, n in sorted(latest.owner_counts.items()))
        table.add_row(
            summary.name,
            summary.contract_kind,
            f"v{latest.version}",
            str(latest.record_count),
            owners,
            latest.merkle_root[:16] + "…",
        )
    console.print(table)


@dataset_app.command("show")
@reports_errors
def dataset_show(name: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")]) -> None:
    """One dataset version: lineage, digests and shares."""
    from databright.datasets import Registry

    settings = _settings()
    dataset, _, version = name.partition("@")
    registry = Registry(settings.exchange_db())
    v = registry.get_version(dataset, int(version.lstrip("v")) if version else None)
    console.print_json(json.dumps(v.to_dict()))


# --- workers ------------------------------------------------------------------------------------


@worker_app.command("register")
@reports_errors
def worker_register(
    provider: Annotated[str, typer.Option(help="Provider id")],
    price: Annotated[str, typer.Option(help="Price per attested work unit in DBX, e.g. 0.000003")],
    capacity: Annotated[int, typer.Option(help="Most work units one job may use", min=1)],
) -> None:
    """Register a hardware provider; the train flow starts and attests its worker on demand."""
    from databright.market import Provider, register_provider

    registered = register_provider(_settings().exchange_db(), Provider(provider, _amount(price), capacity))
    console.print(
        f"provider {registered.provider_id}: {format_amount(registered.price_per_unit)} per work unit, "
        f"capacity {registered.capacity:,}"
    )


@worker_app.command("list")
@reports_errors
def worker_list() -> None:
    """Registered providers and the offers their attested workers opened."""
    from databright.market import list_offers, list_providers

    db = _settings().exchange_db()
    providers = Table("provider", "price / work unit", "capacity", "tee type")
    for p in list_providers(db):
        providers.add_row(p.provider_id, format_amount(p.price_per_unit), f"{p.capacity:,}", p.tee_type)
    console.print(providers)
    offers = Table("offer", "provider", "assurance", "session key", "attestation", "status")
    for o in list_offers(db):
        offers.add_row(
            o.offer_id,
            o.provider_id,
            o.assurance,
            o.session_public_key[:16] + "…",
            o.attestation_result_id[:16] + "…",
            o.status,
        )
    console.print(offers)


# --- training -----------------------------------------------------------------------------------


@app.command()
@reports_errors
def train(
    dataset: Annotated[str, typer.Option(help="NAME or NAME@VERSION")],
    validation: Annotated[Path, typer.Option(help="Trainer's validation file (CSV or Parquet)")],
    budget: Annotated[str, typer.Option(help="Payment for the job in DBX, e.g. 10 or 12.5")],
    trainer: Annotated[str, typer.Option(help="Trainer id whose account pays")],
    task: Annotated[str, typer.Option(help="Enclave task")] = "tabular_logreg",
    seed: Annotated[int, typer.Option(help="Training seed")] = 11,
    period: Annotated[str | None, typer.Option(help="Period the job belongs to (YYYY-MM)")] = None,
) -> None:
    """Train a model on a dataset version in an attested worker of the pool."""
    settings = _settings(period)
    _use_prefect(settings)
    from flows.train import TrainConfig, train_flow

    name, _, version = dataset.partition("@")
    job = train_flow(
        TrainConfig(
            dataset=name,
            version=int(version.lstrip("v")) if version else None,
            validation=str(validation),
            payment=_amount(budget),
            trainer=trainer,
            task=task,
            seed=seed,
        )
    )
    from databright.render import render_job

    render_job(job, console)


# --- settlement ---------------------------------------------------------------------------------


@app.command()
@reports_errors
def settle(period: Annotated[str | None, typer.Option(help="Period to settle (YYYY-MM)")] = None) -> None:
    """Verify the period's receipts, split every payment and post it to the ledger."""
    settings = _settings(period)
    _use_prefect(settings)
    from flows.settle import SettleConfig, settle_flow

    settlement = settle_flow(SettleConfig(period=settings.period))
    from databright.render import render_settlement

    render_settlement(settlement, console)


@app.command()
@reports_errors
def statement(
    holder: Annotated[str, typer.Argument(help="Account holder, e.g. contributor:alice or alice")],
    period: Annotated[str | None, typer.Option(help="Period (YYYY-MM)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON statement")] = False,
) -> None:
    """Print a holder's statement for a period."""
    from databright.settlement import find_statement, render_statement

    settings = _settings(period)
    found = find_statement(settings.statements_dir, settings.period, holder)
    if as_json:
        console.print_json(json.dumps(found.to_dict()))
    else:
        console.print(render_statement(found), markup=False)


@ledger_app.command("deposit")
@reports_errors
def ledger_deposit(
    trainer: Annotated[str, typer.Argument(help="Trainer id to credit")],
    amount: Annotated[str, typer.Argument(help="Amount in DBX, e.g. 25")],
    reference: Annotated[str, typer.Option(help="External payment reference; repeating it is a no-op")],
) -> None:
    """Credit a trainer's account with money received from outside the exchange."""
    from databright.ledger import deposit

    transfer = deposit(_settings().exchange_db(), trainer, _amount(amount), reference)
    console.print(
        f"{transfer.credit_account} credited {format_amount(transfer.amount)} ({transfer.transfer_id[:16]}…)"
    )


@ledger_app.command("verify")
@reports_errors
def ledger_verify() -> None:
    """Check every ledger invariant; exit 1 if any is broken."""
    from databright.ledger import verify_ledger

    report = verify_ledger(_settings().exchange_db())
    for check in report.checks:
        if check.ok:
            console.print(f"[green]✓[/] {check.detail}")
        else:
            err_console.print(f"[red]✗ {check.detail}[/]")
    if not report.ok:
        err_console.print(f"LedgerInvariantBroken: {len(report.failures)} invariant(s) broken")
        raise typer.Exit(1)


@enclave_app.command("measure")
@reports_errors
def enclave_measure(
    task: Annotated[str, typer.Argument(help="Enclave task name, e.g. tabular_logreg")],
) -> None:
    """Print the measurement of an enclave task (what the attestation policy allows)."""
    from databright.trust.measurement import measure_task

    settings = _settings()
    console.print(measure_task(settings.enclave_tasks_dir / task))


def main() -> None:
    app(prog_name="databright")


if __name__ == "__main__":
    main()
