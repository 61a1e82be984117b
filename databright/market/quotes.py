"""What a job will cost, before it runs: the data price, the compute estimate, and the payment.

The payment of a job is split by the allocation policy into a data, a compute and a fee share
(``AllocationPolicy.split_payment``). A quote is therefore the *smallest* payment whose data share
covers the dataset's data price (``policies/pricing.yaml``: minor units per record visit) and whose
compute share covers the chosen offers' price for the job's work units. The trainer's budget must
reach the quote; the budget is escrowed, the quoted payment is what settlement charges, and the
rest of the budget is refunded (``ledger.escrow.close_escrow``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from databright.errors import ConfigError, NoOfferFits
from databright.market.allocation import Quote, choose_offers
from databright.market.offers import Offer
from databright.settlement.policy import AllocationPolicy


@dataclass(frozen=True)
class DataPricing:
    """``policies/pricing.yaml``: a default price per record visit and per-dataset prices."""

    version: int
    default_price_per_visit: int
    datasets: Mapping[str, int]

    def price_per_visit(self, dataset: str) -> int:
        return self.datasets.get(dataset, self.default_price_per_visit)

    @classmethod
    def load(cls, path: Path) -> DataPricing:
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"pricing policy {path} does not exist; restore policies/pricing.yaml") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"pricing policy {path} is not valid YAML: {exc}") from exc
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str = "pricing policy") -> DataPricing:
        if not isinstance(data, dict) or set(data) != {"version", "default", "datasets"}:
            raise ConfigError(
                f"{source}: expected exactly the keys version, default and datasets, got "
                f"{sorted(data) if isinstance(data, dict) else type(data).__name__}"
            )

        def price(value: Any, where: str) -> int:
            found = value.get("price_per_visit") if isinstance(value, dict) else None
            if isinstance(found, bool) or not isinstance(found, int) or found < 0:
                raise ConfigError(
                    f"{source}: {where} needs price_per_visit, a non-negative int of minor units, "
                    f"got {value!r}"
                )
            return found

        datasets = data["datasets"] or {}
        if not isinstance(datasets, dict):
            raise ConfigError(f"{source}: datasets must map dataset names to prices, got {datasets!r}")
        return cls(
            version=int(data["version"]),
            default_price_per_visit=price(data["default"], "default"),
            datasets={name: price(value, f"datasets.{name}") for name, value in datasets.items()},
        )


@dataclass(frozen=True)
class JobQuote:
    """The price of one job on the offers it would run on, and the budget it must fit."""

    dataset: str
    visits: int  # rows × epochs: every record read once per epoch
    work_units: int
    data_price: int
    compute_estimate: int
    payment: int  # the smallest payment whose shares cover both
    offers: tuple[Offer, ...]

    def describe(self) -> str:
        return (
            f"quote for {self.dataset}: data {self.data_price:,} ({self.visits:,} record visits) + compute "
            f"{self.compute_estimate:,} ({self.work_units:,} work units on "
            f"{', '.join(o.provider_id for o in self.offers)}) -> payment {self.payment:,} minor units"
        )


def payment_covering(policy: AllocationPolicy, data_price: int, compute_cost: int) -> int:
    """The smallest payment whose data share is at least ``data_price`` and compute share at least
    ``compute_cost`` under ``policy``'s split (exact integer shares, largest remainder)."""
    shares = (
        (data_price, policy.data_share_bps, "data"),
        (compute_cost, policy.compute_share_bps, "compute"),
    )
    payment = 1
    for needed, bps, _ in shares:
        if needed and not bps:
            raise ConfigError(
                f"the allocation policy gives the {_} share 0 bps, so no payment can cover {needed:,}"
            )
        if needed:
            # A share is at most the ceiling of its exact part, so no smaller payment can cover it.
            payment = max(payment, (needed - 1) * 10_000 // bps + 1)
    # Largest remainder rounds a share up or down by under one unit: step up until both are covered.
    while True:
        split = policy.split_payment(payment)
        if split["data"] >= data_price and split["compute"] >= compute_cost:
            return payment
        payment += 1


def quote_job_price(
    policy: AllocationPolicy,
    pricing: DataPricing,
    offers: Sequence[Offer],
    *,
    dataset: str,
    rows: int,
    epochs: int,
    model_cost: int,
    workers: int,
    budget: int,
) -> JobQuote:
    """Quote a job on the cheapest ``workers`` offers; ``NoOfferFits`` (with the quote) when the
    budget cannot pay it."""
    visits = rows * epochs
    data_price = visits * pricing.price_per_visit(dataset)
    # Allocation first with no compute limit: which offers are cheapest does not depend on the budget.
    unbounded = Quote(rows=rows, epochs=epochs, model_cost=model_cost, payment=1, compute_budget=10**30)
    chosen = choose_offers(offers, unbounded, workers)
    share = -(-unbounded.work_units // workers)
    compute = sum(
        min(share, unbounded.work_units - share * rank) * o.price_per_unit for rank, o in enumerate(chosen)
    )
    payment = payment_covering(policy, data_price, compute)
    quote = JobQuote(dataset, visits, unbounded.work_units, data_price, compute, payment, tuple(chosen))
    if payment > budget:
        raise NoOfferFits(
            f"the budget {budget:,} does not cover the {quote.describe()}; raise the budget to at least "
            f"{payment:,} minor units, or lower the cost (fewer epochs, a lower --max-price)",
            quote=quote,
        )
    return quote
