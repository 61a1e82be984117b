"""Choosing the attested offer that runs a job.

A quote estimates the job's work units (samples processed × model cost, from the task manifest);
an offer fits when its price for those units stays within the compute share of the job's payment
and its capacity covers them. The cheapest fitting offer wins; ties go to the lower provider id,
then offer id, so the same pool and job always give the same allocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from databright.errors import NoOfferFits
from databright.market.offers import Offer


@dataclass(frozen=True)
class Quote:
    rows: int
    epochs: int
    model_cost: int
    payment: int
    compute_budget: int  # the compute pool's share of the payment, minor units

    @property
    def work_units(self) -> int:
        return self.rows * self.epochs * self.model_cost

    def cost(self, offer: Offer) -> int:
        return self.work_units * offer.price_per_unit

    def describe(self) -> str:
        return (
            f"{self.work_units:,} work units ({self.rows:,} rows × {self.epochs} epochs × model cost "
            f"{self.model_cost}) against a compute budget of {self.compute_budget:,} minor units "
            f"(the compute share of a {self.payment:,} payment)"
        )


def choose_offer(offers: Sequence[Offer], quote: Quote) -> Offer:
    """The cheapest open offer that fits the quote, or ``NoOfferFits`` saying what would."""
    open_offers = [o for o in offers if o.status == "open"]
    if not open_offers:
        raise NoOfferFits(
            "no open offer in the pool: start a worker (`databright worker start`) or wait for one to attest",
            quote=quote,
        )
    fitting = [
        o for o in open_offers if quote.cost(o) <= quote.compute_budget and o.capacity >= quote.work_units
    ]
    if not fitting:
        cheapest = min(open_offers, key=lambda o: (o.price_per_unit, o.provider_id, o.offer_id))
        raise NoOfferFits(
            f"no offer fits {quote.describe()}; the cheapest, {cheapest.provider_id} at "
            f"{cheapest.price_per_unit} per unit, would cost {quote.cost(cheapest):,} with capacity "
            f"{cheapest.capacity:,}: raise the budget to at least "
            f"{_payment_needed(quote, cheapest):,} or train on fewer rows or epochs",
            quote=quote,
        )
    return min(fitting, key=lambda o: (o.price_per_unit, o.provider_id, o.offer_id))


def _payment_needed(quote: Quote, offer: Offer) -> int:
    # compute_budget scales linearly with payment; round up so the suggestion really fits.
    if quote.compute_budget == 0:
        return quote.cost(offer)
    return -(-quote.cost(offer) * quote.payment // quote.compute_budget)
