"""The ``value`` flow: value every completed job of a period inside an attested value task.

Each job's records are valued by the ``knn_shapley`` enclave task on the cheapest provider's
attested worker (price, then provider id); what comes back is a signed valuation receipt, verified and stored
once per job. Settlement pays the data share only on these signed values, so the period's ``settle``
run refuses any job this flow has not valued.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from databright.config import Settings
from databright.market import list_providers
from databright.market.pool import LocalPool
from databright.training.jobs import get_job
from databright.training.valuation_store import (
    SignedValuation,
    list_valuations,
    load_valuation_envelope,
    unvalued_jobs,
)
from databright.training.value_service import VALUE_TASK, value_job
from databright.trust.valuation_receipts import parse_valuation_receipt


class ValueConfig(BaseModel):
    period: str = Field(description="Period whose completed jobs to value, YYYY-MM", pattern=r"^\d{4}-\d{2}$")
    task: str = Field(VALUE_TASK, description="Value enclave task (the policy must allow its measurement)")


@task(cache_policy=NO_CACHE)
def value_period(settings: Settings, config: ValueConfig) -> list[SignedValuation]:
    db = settings.exchange_db()
    pending = unvalued_jobs(db, config.period)
    if pending:
        # Only the cheapest provider's worker is started: one attested session values every job.
        providers = sorted(list_providers(db), key=lambda p: (p.price_per_unit, p.provider_id))[:1]
        with LocalPool(settings, db, providers, task=config.task) as pool:
            (offer,) = pool.offers
            verify = settings.valuation_verifier(db)
            for job_id in pending:
                value_job(settings, db, pool, offer, get_job(db, job_id), verify=verify)
    return list_valuations(db, config.period)


@flow(name="value", log_prints=True)
def value_flow(config: ValueConfig) -> list[SignedValuation]:
    settings = Settings.from_env().with_period(config.period).ensure_dirs()
    valued = value_period(settings, config)
    store = settings.object_store()
    rows = []
    for v in valued:
        receipt = parse_valuation_receipt(load_valuation_envelope(store, v))
        for owner, part in sorted(receipt.owners.items()):
            rows.append(
                {
                    "job": v.job_id,
                    "owner": owner,
                    "records": part.records,
                    "value": f"{part.value:.6g}",
                    "method": v.method,
                    "provider": v.provider_id,
                    "assurance": receipt.assurance,
                }
            )
    create_table_artifact(
        rows,
        key=f"valuations-{config.period}",
        description="Signed per-owner values of every job of the period (what the data share is paid on)",
    )
    return valued


if __name__ == "__main__":
    import sys

    print(value_flow(ValueConfig(period=sys.argv[1] if len(sys.argv) > 1 else Settings.from_env().period)))
