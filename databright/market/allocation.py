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


def _rank_key(offer: Offer) -> tuple[int, str, str]:
    return (offer.price_per_unit, offer.provider_id, offer.offer_id)


def choose_offers(offers: Sequence[Offer], quote: Quote, count: int) -> list[Offer]:
    """The ``count`` cheapest open offers, one per provider, that together fit the quote.

    A data-parallel job gives each worker an equal share of the rows (to within one), so each
    offer must have capacity for ``ceil(work units / count)`` and the job costs each share at its
    offer's price; the sum must stay within the compute budget. Ties go to the lower provider id,
    then offer id, so the same pool and job always give the same allocation. One worker: exactly
    ``choose_offer``.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise NoOfferFits(f"a job needs at least one worker, not {count!r}", quote=quote)
    if count == 1:
        return [choose_offer(offers, quote)]
    share = -(-quote.work_units // count)
    cheapest_per_provider: dict[str, Offer] = {}
    for offer in sorted((o for o in offers if o.status == "open"), key=_rank_key):
        cheapest_per_provider.setdefault(offer.provider_id, offer)
    fitting = sorted((o for o in cheapest_per_provider.values() if o.capacity >= share), key=_rank_key)
    if len(fitting) < count:
        raise NoOfferFits(
            f"{count} workers were asked for, but only {len(fitting)} provider(s) have an open offer with "
            f"capacity for a share of {share:,} work units ({quote.describe()}); start more workers "
            "(`databright worker start`) or ask for fewer",
            quote=quote,
        )
    chosen = fitting[:count]
    cost = sum(share * o.price_per_unit for o in chosen)
    if cost > quote.compute_budget:
        raise NoOfferFits(
            f"the {count} cheapest offers ({', '.join(o.provider_id for o in chosen)}) would cost up to "
            f"{cost:,} for {quote.describe()}: raise the budget to at least "
            f"{-(-cost * quote.payment // max(1, quote.compute_budget)):,} or ask for fewer workers",
            quote=quote,
        )
    return chosen
