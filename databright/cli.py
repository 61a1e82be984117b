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
attest_app = typer.Typer(help="Hardware attestation: check a real SGX/TDX quote.", no_args_is_help=True)
audit_app = typer.Typer(help="Audit a period from contributed files to transfers.", no_args_is_help=True)
settle_app = typer.Typer(help="Settle a period: propose, review, approve or reject, post.")
stack_app = typer.Typer(help="The whole exchange on this machine: Prefect server and provider agents.")
statement_app = typer.Typer(
    help="Holders' statements: show one, or re-derive and verify it.", no_args_is_help=True
)
contract_app = typer.Typer(
    help="Data contracts: a Great Expectations suite and a schema per kind.", no_args_is_help=True
)
app.add_typer(dataset_app, name="dataset")
app.add_typer(worker_app, name="worker")
app.add_typer(stack_app, name="stack")
app.add_typer(ledger_app, name="ledger")
app.add_typer(enclave_app, name="enclave")
app.add_typer(contract_app, name="contract")
app.add_typer(audit_app, name="audit")
app.add_typer(statement_app, name="statement")
app.add_typer(settle_app, name="settle")
app.add_typer(attest_app, name="attest")

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
    delimiter: Annotated[str, typer.Option(help="CSV field delimiter")] = ",",
) -> None:
    """Register a CSV, Parquet or JSON Lines file (plain, .gz or .zip) through the ingest flow."""
    settings = _settings()
    _use_prefect(settings)
    from flows.ingest import IngestConfig, ingest_flow

    result = ingest_flow(
        IngestConfig(dataset=dataset, owner=owner, path=str(path), contract=contract, delimiter=delimiter)
    )
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


def _percent(ppm: int) -> str:
    """Parts per million as a percentage, by integer arithmetic."""
    return f"{ppm // 10_000}.{ppm % 10_000:04d} %"


def _name_version(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@V`` (``V`` may be written ``v3``)."""
    name, _, version = text.partition("@")
    if not version:
        return name, None
    try:
        return name, int(version.removeprefix("v"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: write a version as NAME@3 or NAME@v3") from None


@dataset_app.command("show")
@reports_errors
def dataset_show(name: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")]) -> None:
    """One dataset version: lineage, digests, shares and its manifest."""
    from databright.datasets import Registry, read_manifest

    settings = _settings()
    dataset, version = _name_version(name)
    found = Registry(settings.exchange_db()).get_version(dataset, version)
    console.print_json(
        json.dumps({"version": found.to_dict(), "manifest": read_manifest(settings.workspace_dir, found)})
    )


@dataset_app.command("diff")
@reports_errors
def dataset_diff(
    a: Annotated[str, typer.Argument(help="NAME@A")], b: Annotated[str, typer.Argument(help="NAME@B")]
) -> None:
    """What changed between two versions: records added and withdrawn, per owner."""
    from databright.datasets import diff_versions

    settings = _settings()
    (name_a, va), (name_b, vb) = _name_version(a), _name_version(b)
    if name_a != name_b or va is None or vb is None:
        raise typer.BadParameter("compare two versions of one dataset, e.g. credit@1 credit@3")
    diff = diff_versions(settings.exchange_db(), settings.workspace_dir, name_a, va, vb)
    table = Table("owner", f"records v{va}", f"records v{vb}", "added", "withdrawn",
                  title=f"{name_a} v{va} → v{vb}: +{diff.added} −{diff.withdrawn}")  # fmt: skip
    for change in diff.owners:
        row = change.to_dict()
        table.add_row(change.owner, *(str(row[k]) for k in list(row)[1:5]))
    console.print(table)
    console.print(f"Merkle root v{va} {diff.merkle_root_a}\nMerkle root v{vb} {diff.merkle_root_b}")


@dataset_app.command("pull")
@reports_errors
def dataset_pull(name: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")]) -> None:
    """Re-fetch a version from the remote and verify every digest and the Merkle root."""
    from databright.datasets import pull_version

    settings = _settings()
    dataset, version = _name_version(name)
    report = pull_version(settings, settings.exchange_db(), dataset, version)
    console.print(f"{report.dataset} v{report.version}: pulled from {report.remote}")
    console.print(f"verified {report.files_verified} files ({report.bytes_verified:,} bytes)")
    console.print(f"{report.record_count} records, Merkle root {report.merkle_root}")


@dataset_app.command("shares")
@reports_errors
def dataset_shares(name: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")]) -> None:
    """Each owner's records and share: by count until valued, by measured value once settled."""
    from databright.datasets import dataset_shares as shares_of

    settings = _settings()
    dataset, version = _name_version(name)
    shares = shares_of(settings.exchange_db(), dataset, version)
    table = Table("owner", "records", "share by count", "value paid", "share by value",
                  title=f"{shares.dataset} v{shares.version} — shares by {shares.basis}")  # fmt: skip
    for o in shares.owners:
        by_value = "-" if o.share_by_value_ppm is None else _percent(o.share_by_value_ppm)
        by_count = _percent(o.share_by_count_ppm)
        table.add_row(o.owner, str(o.records), by_count, format_amount(o.value), by_value)
    console.print(table)


@dataset_app.command("withdraw")
@reports_errors
def dataset_withdraw(
    dataset: Annotated[str, typer.Argument(help="Dataset name")],
    owner: Annotated[str, typer.Option(help="Owner whose records leave the dataset")],
    records: Annotated[
        Path | None, typer.Option(help="File with one record id per line (default: all of the owner's)")
    ] = None,
) -> None:
    """Withdraw an owner's records: a new version without them; past versions and payouts stay."""
    from databright.datasets import withdraw_records

    settings = _settings()
    ids = None
    if records is not None:
        try:
            ids = [line.strip() for line in records.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {records}: {exc}") from exc
    result = withdraw_records(settings, settings.exchange_db(), dataset=dataset, owner=owner, record_ids=ids)
    new = result.version
    console.print(f"{result.dataset}: {result.withdrawn} record(s) of {result.owner} withdrawn")
    console.print(
        f"new version v{new.version} (parent v{result.parent.version}), Merkle root {new.merkle_root}"
    )


# --- contracts ----------------------------------------------------------------------------------


@contract_app.command("init")
@reports_errors
def contract_init(
    kind: Annotated[str, typer.Argument(help="New contract kind, e.g. credit-v1")],
    sample: Annotated[Path, typer.Argument(help="A representative sample file to infer the schema from")],
    label: Annotated[str | None, typer.Option(help="Label column")] = None,
    features: Annotated[str | None, typer.Option(help="Feature columns, comma-separated")] = None,
) -> None:
    """Write data_contracts/KIND/ (schema + Great Expectations suite) inferred from a sample."""
    from databright.datasets import describe_contract, init_contract

    settings = _settings()
    contract = init_contract(
        settings.contracts_dir, kind, sample, label=label,
        features=[f.strip() for f in features.split(",")] if features else None,
    )  # fmt: skip
    console.print_json(json.dumps(describe_contract(contract)))


@contract_app.command("show")
@reports_errors
def contract_show(kind: Annotated[str, typer.Argument(help="Contract kind")]) -> None:
    """A contract's columns, roles and every expectation in words."""
    from databright.datasets import describe_contract, load_contract

    console.print_json(json.dumps(describe_contract(load_contract(_settings().contracts_dir, kind))))


@contract_app.command("check")
@reports_errors
def contract_check(
    kind: Annotated[str, typer.Argument(help="Contract kind")],
    path: Annotated[Path, typer.Argument(help="File to check (nothing is registered)")],
    delimiter: Annotated[str, typer.Option(help="CSV field delimiter")] = ",",
) -> None:
    """Dry run: check a file against a contract; exit 1 if any row would be quarantined."""
    from databright.datasets import CsvDialect, check_file, load_contract

    report = check_file(
        load_contract(_settings().contracts_dir, kind), path, dialect=CsvDialect(delimiter=delimiter)
    )
    console.print(f"{path.name}: {report.rows_received} rows, {report.rows_passed} pass, "
                  f"{report.quarantined_rows} would be quarantined (contract {kind})")  # fmt: skip
    if report.quarantined:
        table = Table("row", "column", "expectation", "value")
        for q in report.quarantined[:50]:
            table.add_row(str(q.row_number), q.column, q.expectation, str(q.value))
        console.print(table)
        raise typer.Exit(1)


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


@worker_app.command("start")
@reports_errors
def worker_start(
    provider: Annotated[str, typer.Option(help="Provider id")],
    price: Annotated[str, typer.Option(help="Price per attested work unit in DBX, e.g. 0.000003")],
    capacity: Annotated[int, typer.Option(help="Most work units one job may use", min=1)],
    pool: Annotated[str, typer.Option(help="Prefect process work pool to serve")] = "databright-providers",
    task: Annotated[str, typer.Option(help="Enclave task the worker is attested for")] = "tabular_logreg",
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats", min=0.2)] = 2.0,
    prefect_worker: Annotated[
        bool, typer.Option(help="Run a Prefect worker on the pool (it runs the train deployment)")
    ] = True,
) -> None:
    """Attest this machine's worker, open its offer and serve the pool until stopped (Ctrl-C)."""
    from databright.market import Provider
    from databright.market.agent import ProviderAgent

    settings = _settings()
    agent = ProviderAgent(
        settings,
        Provider(provider, _amount(price), capacity),
        pool=pool,
        task=task,
        heartbeat_s=heartbeat,
        prefect_worker=prefect_worker,
    )
    try:
        record = agent.start()
    except BaseException:
        agent.stop()
        raise
    console.print(
        f"provider {provider}: offer {record.offer_id} open on pool {pool} for {task} "
        f"(attestation {record.attestation_result_id[:16]}…, agent pid {record.pid}, "
        f"listening on {record.address[0]}:{record.address[1]}); stop with "
        f"`databright worker stop --provider {provider} --pool {pool}`"
    )
    agent.serve_forever()
    console.print(f"provider {provider}: stopped, offer {record.offer_id} withdrawn")


@worker_app.command("stop")
@reports_errors
def worker_stop(
    provider: Annotated[str, typer.Option(help="Provider id")],
    pool: Annotated[str, typer.Option(help="Work pool it serves")] = "databright-providers",
) -> None:
    """Stop a provider's agent (SIGINT to its pid): its offer is withdrawn, its worker stopped."""
    from databright.market.agent import stop_agent

    pid = stop_agent(_settings(), pool, provider)
    console.print(f"provider {provider}: agent {pid} stopped")


@worker_app.command("list")
@reports_errors
def worker_list(
    pool: Annotated[str, typer.Option(help="Work pool whose agents to show")] = "databright-providers",
) -> None:
    """Providers, their offers (with assurance), live agents and the work each provider did."""
    from databright.market import list_offers, list_providers
    from databright.market.remote_pool import agent_records, lost
    from databright.training.jobs import list_jobs

    settings = _settings()
    db = settings.exchange_db()
    providers = Table(
        "provider", "price / work unit", "capacity", "tee type", "jobs", "work units", "last job"
    )
    jobs = list_jobs(db)
    for p in list_providers(db):
        done = [j for j in jobs if j.provider_id == p.provider_id and j.status == "completed"]
        providers.add_row(
            p.provider_id,
            format_amount(p.price_per_unit),
            f"{p.capacity:,}",
            p.tee_type,
            str(len(done)),
            f"{sum(j.work_units or 0 for j in done):,}",
            done[-1].job_id if done else "-",
        )
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
    agents = Table("agent", "pool", "task", "pid", "offer", "heartbeat", "state", "jobs run")
    for record in agent_records(settings, pool):
        why = lost(record)
        agents.add_row(
            record.provider_id,
            record.pool,
            record.task,
            str(record.pid),
            record.offer_id,
            f"{record.age_s():.1f} s ago",
            "live" if why is None else f"lost: {why}",
            str(record.jobs_run),
        )
    console.print(agents)


# --- the local stack ------------------------------------------------------------------------------


@stack_app.command("up")
@reports_errors
def stack_up(
    providers: Annotated[int, typer.Option(help="Provider agents to start", min=0, max=16)] = 2,
) -> None:
    """Start a Prefect server, the work pools and provider agents; record their pids."""
    from databright import stack

    for component in stack.up(_settings(), providers=providers):
        console.print(f"{component.name}: pid {component.pid}, {component.url} (log {component.log})")


@stack_app.command("status")
@reports_errors
def stack_status() -> None:
    """Each component of the stack, its URL and its health."""
    from databright import stack

    table = Table("component", "pid", "url", "health", "log")
    found = stack.status(_settings())
    for component, health in found:
        table.add_row(component.name, str(component.pid), component.url, health, component.log)
    console.print(table if found else "no stack runs from this home; `databright stack up` starts one")


@stack_app.command("down")
@reports_errors
def stack_down() -> None:
    """Stop the stack by pid: agents first, then the server (SIGINT, then SIGTERM)."""
    from databright import stack

    stopped = stack.down(_settings())
    console.print(f"stopped {', '.join(c.name for c in stopped)}" if stopped else "no stack was running")


# --- training -----------------------------------------------------------------------------------


@app.command()
@reports_errors
def train(
    dataset: Annotated[str, typer.Option(help="NAME or NAME@VERSION")],
    validation: Annotated[Path, typer.Option(help="Trainer's validation file (CSV or Parquet)")],
    budget: Annotated[
        str, typer.Option(help="Most to spend in DBX, e.g. 10 or 12.5 (escrowed; unused is refunded)")
    ],
    trainer: Annotated[str, typer.Option(help="Trainer id whose account pays")],
    task: Annotated[str, typer.Option(help="Enclave task")] = "tabular_logreg",
    seed: Annotated[int, typer.Option(help="Training seed")] = 11,
    workers: Annotated[int, typer.Option(help="Workers to train on at once (data-parallel)")] = 1,
    payment: Annotated[
        str | None, typer.Option(help="Pay exactly this (DBX) instead of the quote; at most the budget")
    ] = None,
    pool: Annotated[str, typer.Option(help="Work pool of provider agents (empty: start workers here)")] = "",
    max_price: Annotated[
        str | None, typer.Option(help="Highest price per work unit to accept, in DBX (e.g. 0.000003)")
    ] = None,
    period: Annotated[str | None, typer.Option(help="Period the job belongs to (YYYY-MM)")] = None,
) -> None:
    """Train a model on a dataset version in attested workers of the pool (``--workers`` at once)."""
    settings = _settings(period)
    _use_prefect(settings)
    from flows.train import TrainConfig, train_flow

    name, _, version = dataset.partition("@")
    parts = train_flow(
        TrainConfig(
            dataset=name,
            version=int(version.lstrip("v")) if version else None,
            validation=str(validation),
            payment=None if payment is None else _amount(payment),
            budget=_amount(budget),
            trainer=trainer,
            pool=pool,
            task=task,
            seed=seed,
            workers=workers,
            max_price=None if max_price is None else _amount(max_price),
        )
    )
    from databright.render import render_job

    for part in parts:
        render_job(part, console)


# --- settlement ---------------------------------------------------------------------------------


@app.command()
@reports_errors
def value(period: Annotated[str | None, typer.Option(help="Period to value (YYYY-MM)")] = None) -> None:
    """Value every completed job of the period in the attested value task (signed valuations)."""
    settings = _settings(period)
    _use_prefect(settings)
    from flows.value import ValueConfig, value_flow

    for valuation in value_flow(ValueConfig(period=settings.period)):
        console.print(
            f"{valuation.job_id}: {valuation.method} by {valuation.provider_id} under "
            f"{valuation.attestation_result_id}, receipt {valuation.receipt_key}"
        )


@settle_app.callback(invoke_without_command=True)
@reports_errors
def settle(
    ctx: typer.Context,
    period: Annotated[str | None, typer.Option(help="Period to settle (YYYY-MM)")] = None,
    approver: Annotated[
        str | None,
        typer.Option(help="Approve the proposal as NAME and post it now (no separate review)"),
    ] = None,
) -> None:
    """Propose the period's settlement for review; with --approver, approve and post it at once."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(period)
    _use_prefect(settings)
    from databright.render import render_settlement
    from flows.settle import SettleConfig, settle_flow

    if approver is not None:
        config = SettleConfig(period=settings.period, review=False, approver=approver)
        render_settlement(settle_flow(config), console)
        return
    from flows.settle import propose_for

    proposal = propose_for(settings, settings.period)
    console.print(proposal.summary_markdown(), markup=False)
    console.print(
        f"Nothing is posted yet. Approve: `databright settle approve {settings.period} --approver NAME`; "
        f"reject: `databright settle reject {settings.period} --approver NAME --reason TEXT`."
    )


def _review(period: str, decision: str, approver: str, reason: str) -> None:
    settings = _settings(period)
    _use_prefect(settings)
    from databright.render import render_settlement
    from flows.settle import review_period

    outcome = review_period(settings.period, decision, approver, reason)
    if outcome.flow_run_id is not None:
        console.print(f"resumed the paused settle run {outcome.flow_run_id}: it will {decision} {period}")
    elif outcome.settlement is not None:
        render_settlement(outcome.settlement, console)
    else:
        console.print(f"period {outcome.period} is {outcome.state}; nothing was posted")


@settle_app.command("approve")
@reports_errors
def settle_approve(
    period: Annotated[str, typer.Argument(help="Period (YYYY-MM)")],
    approver: Annotated[str, typer.Option(help="Who approves (recorded with the posting)")],
    reason: Annotated[str, typer.Option(help="A note kept with the approval")] = "",
) -> None:
    """Approve the proposed settlement and post it (resumes a paused settle run if one waits)."""
    _review(period, "approve", approver, reason)


@settle_app.command("reject")
@reports_errors
def settle_reject(
    period: Annotated[str, typer.Argument(help="Period (YYYY-MM)")],
    approver: Annotated[str, typer.Option(help="Who rejects")],
    reason: Annotated[str, typer.Option(help="Why (required; kept with the period)")],
) -> None:
    """Reject the proposed settlement: nothing is posted (resumes a paused settle run if one waits)."""
    _review(period, "reject", approver, reason)


@settle_app.command("status")
@reports_errors
def settle_status(
    period: Annotated[str | None, typer.Argument(help="One period (YYYY-MM); all if left out")] = None,
) -> None:
    """Show each period's settlement state, reviewer, reason and allocation root."""
    from rich.table import Table

    from databright.db import ExchangeDB

    settings = _settings(None)
    sql = (
        "SELECT period, state, approver, reason, allocation_root, posted_at FROM settlements"
        + (" WHERE period = ?" if period else "")
        + " ORDER BY period"
    )
    found = ExchangeDB(settings.db_path).query(sql, [period] if period else [])
    if not found:
        console.print(
            f"no settlement of {period} yet; propose it with `databright settle --period {period}`"
            if period
            else "no period has been settled yet; propose one with `databright settle --period YYYY-MM`"
        )
        return
    table = Table("period", "state", "reviewer", "reason", "allocation root", "posted at")
    for p, state, approver, reason, root, posted_at in found:
        table.add_row(p, state, approver or "", reason or "", (root or "")[:16], str(posted_at or ""))
    console.print(table)


@statement_app.command("show")
@reports_errors
def statement_show(
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


@statement_app.command("verify")
@reports_errors
def statement_verify(
    holder: Annotated[str, typer.Argument(help="Account holder, e.g. contributor:alice or alice")],
    period: Annotated[
        str | None, typer.Argument(help="Period (YYYY-MM); the current one when left out")
    ] = None,
) -> None:
    """Re-derive a holder's payout from the signed receipts and the policy; check statement and ledger."""
    from databright.settlement.statement_check import check_statement

    settings = _settings(period)
    db = settings.exchange_db()
    check = check_statement(
        db,
        settings.object_store(),
        holder=holder,
        period=settings.period,
        policy=settings.allocation_policy(),
        statements_dir=settings.statements_dir,
        verify=settings.receipt_verifier(db),
        verify_valuation=settings.valuation_verifier(db),
    )
    if check.ok:
        console.print(
            f"[green]ok[/] — {check.holder} {check.period}: re-derived {format_amount(check.derived_total)} "
            f"from {check.jobs} job(s) = statement = ledger"
        )
        return
    for failure in check.failures:
        console.print(f"[red]✗[/] {failure}", markup=True)
    raise typer.Exit(1)


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


@ledger_app.command("deposit-unmatched")
@reports_errors
def ledger_deposit_unmatched(
    amount: Annotated[str, typer.Argument(help="Amount in DBX, e.g. 25")],
    reference: Annotated[str, typer.Option(help="External payment reference; repeating it is a no-op")],
) -> None:
    """Book money whose reference names no trainer yet: it waits in suspense until matched."""
    from databright.ledger import deposit_unmatched

    transfer = deposit_unmatched(_settings().exchange_db(), _amount(amount), reference)
    console.print(
        f"suspense holds {format_amount(transfer.amount)} under {reference}; match it with "
        f"`databright ledger match {reference} TRAINER`"
    )


@ledger_app.command("match")
@reports_errors
def ledger_match(
    reference: Annotated[str, typer.Argument(help="Reference of the unmatched deposit")],
    trainer: Annotated[str, typer.Argument(help="Trainer id it belongs to")],
) -> None:
    """Move an unmatched deposit from suspense to the trainer it belongs to."""
    from databright.ledger import match_deposit

    transfer = match_deposit(_settings().exchange_db(), reference, trainer)
    console.print(f"{transfer.credit_account} credited {format_amount(transfer.amount)} from suspense")


@ledger_app.command("withdraw")
@reports_errors
def ledger_withdraw(
    holder: Annotated[str, typer.Argument(help="Account, e.g. contributor:alice or provider:p1")],
    amount: Annotated[str, typer.Argument(help="Amount in DBX, e.g. 25")],
    reference: Annotated[str, typer.Option(help="Payout reference at the bank; repeating it is a no-op")],
) -> None:
    """Request a payout: the amount moves to payout clearing until the bank sends or returns it."""
    from databright.ledger import request_withdrawal

    transfer = request_withdrawal(_settings().exchange_db(), holder, _amount(amount), reference)
    console.print(
        f"{format_amount(transfer.amount)} of {holder} is in payout clearing; when the bank reports, run "
        f"`databright ledger withdrawal {holder} --reference {reference} --outcome sent|returned`"
    )


@ledger_app.command("withdrawal")
@reports_errors
def ledger_withdrawal(
    holder: Annotated[str, typer.Argument(help="Account that requested the payout")],
    reference: Annotated[str, typer.Option(help="Payout reference given to `ledger withdraw`")],
    outcome: Annotated[str, typer.Option(help="What the bank reported: sent or returned")],
) -> None:
    """Record the bank's outcome of a payout: sent (it leaves the exchange) or returned (to the holder)."""
    from databright.ledger import confirm_withdrawal, return_withdrawal

    record = {"sent": confirm_withdrawal, "returned": return_withdrawal}.get(outcome)
    if record is None:
        raise typer.BadParameter(f"--outcome is {outcome!r}; write sent or returned")
    transfer = record(_settings().exchange_db(), holder, reference)
    console.print(f"withdrawal {reference} of {holder}: {format_amount(transfer.amount)} {outcome}")


@ledger_app.command("reverse")
@reports_errors
def ledger_reverse(
    transfer_id: Annotated[str, typer.Argument(help="The full 64-hex id of the transfer to undo")],
    reason: Annotated[str, typer.Option(help="What was wrong (kept in the ledger)")],
) -> None:
    """Post the mirror of a wrong transfer; history is never edited."""
    from databright.ledger import reverse_transfer

    transfer = reverse_transfer(_settings().exchange_db(), transfer_id, reason)
    console.print(
        f"reversed {transfer_id[:16]}…: {transfer.debit_account} -> {transfer.credit_account} "
        f"{format_amount(transfer.amount)} ({transfer.transfer_id[:16]}…)"
    )


@ledger_app.command("correct")
@reports_errors
def ledger_correct(
    transfer_id: Annotated[str, typer.Argument(help="The full 64-hex id of the wrong transfer")],
    reason: Annotated[str, typer.Option(help="What was wrong (kept in the ledger)")],
    amount: Annotated[str | None, typer.Option(help="The right amount in DBX")] = None,
    credit: Annotated[str | None, typer.Option(help="The right account to credit")] = None,
    debit: Annotated[str | None, typer.Option(help="The right account to debit")] = None,
) -> None:
    """Reverse a wrong transfer and post the right movement, in one transaction."""
    from databright.ledger import correct_transfer

    fixed = correct_transfer(
        _settings().exchange_db(),
        transfer_id,
        reason=reason,
        amount=None if amount is None else _amount(amount),
        credit_account=credit,
        debit_account=debit,
    )
    right = fixed.replacement
    console.print(
        f"reversed {transfer_id[:16]}… and posted {right.debit_account} -> {right.credit_account} "
        f"{format_amount(right.amount)} ({right.transfer_id[:16]}…)"
    )


@ledger_app.command("verify")
@reports_errors
def ledger_verify() -> None:
    """Check every ledger invariant; exit 1 if any is broken."""
    from databright.ledger import audit_public_key, verify_ledger
    from databright.ledger.audit_log import AUDIT_KEY_FILE

    settings = _settings()
    # A home that never settled has no audit key yet, and nothing for a checkpoint to cover.
    audited = (settings.keys_dir / AUDIT_KEY_FILE).is_file()
    report = verify_ledger(
        settings.exchange_db(),
        store=settings.object_store() if audited else None,
        audit_key=audit_public_key(settings.keys_dir) if audited else None,
    )
    for check in report.checks:
        if check.ok:
            console.print(f"[green]✓[/] {check.detail}")
        else:
            err_console.print(f"[red]✗ {check.detail}[/]")
    if not report.ok:
        err_console.print(f"LedgerInvariantBroken: {len(report.failures)} invariant(s) broken")
        raise typer.Exit(1)


@attest_app.command("check")
@reports_errors
def attest_check(
    quote: Annotated[Path, typer.Argument(help="Raw SGX (v3) or TDX (v4) quote file", exists=True)],
    collateral: Annotated[Path, typer.Argument(help="dcap-qvl collateral JSON for the quote", exists=True)],
    task: Annotated[str, typer.Option(help="Enclave task the quote claims to run")],
    at: Annotated[int | None, typer.Option(help="Verify at this unix time (default: now)")] = None,
    policy: Annotated[Path | None, typer.Option(help="Appraisal policy YAML (default: exchange's)")] = None,
) -> None:
    """Verify a quote and its collateral against the appraisal policy (nothing is bound or stored)."""
    import datetime as dt

    from databright.trust import AttestationPolicy
    from databright.trust.dcap import dcap_evidence
    from databright.trust.hardware import DcapVerifier

    settings = _settings()
    evidence = dcap_evidence(quote.read_bytes(), collateral.read_text(encoding="utf-8"))
    chosen = AttestationPolicy.load(policy) if policy else settings.attestation_policy()
    db = settings.exchange_db()
    verifier = DcapVerifier.from_settings(settings, db, settings.object_store(), evidence["tee_type"], chosen)
    moment = dt.datetime.fromtimestamp(at, dt.UTC) if at is not None else None
    result = verifier.appraise_quote(evidence, task=task, now=moment)
    console.print(f"{result.tee_type} quote accepted for {task} under policy {chosen.name} v{chosen.version}")
    console.print(f"  assurance: {result.assurance} · TCB status: {result.tcb_status}")
    console.print(f"  advisories: {', '.join(result.advisory_ids) or 'none'} · debug: {result.debug}")
    console.print(f"  measurement: {result.measurement}")
    console.print(f"  report data: {result.report_data}")


@audit_app.command("verify")
@reports_errors
def audit_verify(
    period: Annotated[str | None, typer.Argument(help="Period to audit (YYYY-MM)")] = None,
) -> None:
    """Walk the period's signed stage statements back to the contributed files; exit 1 at a broken link."""
    from databright.provenance import audit_verify as run_audit

    settings = _settings(period)
    report = run_audit(settings, settings.period)
    if not report.ok:
        err_console.print(report.summary(), markup=False)
        raise typer.Exit(1)
    console.print(f"{report.summary()} · assurance: {report.assurance}", markup=False)


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
