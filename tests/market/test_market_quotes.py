"""Quotes: the smallest payment whose shares cover the data price and the compute estimate, the
pricing policy's refusals, and a budget that cannot pay the quote."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from databright.config import Settings
from databright.errors import ConfigError, NoOfferFits
from databright.market import Offer
from databright.market.quotes import DataPricing, payment_covering, quote_job_price
from databright.settlement.policy import AllocationPolicy

POLICY = AllocationPolicy("test", 1, data_share_bps=7000, compute_share_bps=2000, fee_bps=1000)


@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_the_quoted_payment_is_the_smallest_that_covers_both_shares(data: int, compute: int) -> None:
    payment = payment_covering(POLICY, data, compute)
    split = POLICY.split_payment(payment)
    assert split["data"] >= data and split["compute"] >= compute
    if payment > 1:
        below = POLICY.split_payment(payment - 1)
        assert below["data"] < data or below["compute"] < compute


def test_the_repository_pricing_policy_loads_and_bad_ones_are_refused(settings: Settings) -> None:
    pricing = settings.data_pricing()
    assert pricing.price_per_visit("any-dataset") == pricing.default_price_per_visit >= 0
    good = {"version": 1, "default": {"price_per_visit": 5}, "datasets": {"rare": {"price_per_visit": 50}}}
    assert DataPricing.from_mapping(good).price_per_visit("rare") == 50
    with pytest.raises(ConfigError, match=r"datasets\.rare needs price_per_visit"):
        DataPricing.from_mapping({**good, "datasets": {"rare": {"price_per_visit": -1}}})
    with pytest.raises(ConfigError, match="exactly the keys version, default and datasets"):
        DataPricing.from_mapping({"default": {"price_per_visit": 5}})


def _offer(provider: str, price: int) -> Offer:
    return Offer(f"offer-{provider}", provider, "k", "ar", "simulated", price, 10**9, "open")


def test_a_quote_prices_data_and_compute_and_refuses_a_short_budget() -> None:
    pricing = DataPricing(1, 2, {})
    offers = [_offer("b", 3), _offer("a", 1), _offer("c", 1)]
    kwargs = {"dataset": "demo", "rows": 100, "epochs": 10, "model_cost": 9}
    quote = quote_job_price(POLICY, pricing, offers, workers=2, budget=10**9, **kwargs)  # type: ignore[arg-type]
    assert [o.provider_id for o in quote.offers] == ["a", "c"]
    assert (quote.data_price, quote.compute_estimate) == (2_000, 9_000)  # 1,000 visits; 2 × 4,500 units
    # 9,000 / 20 % = 45,000, but largest remainder already rounds the compute share up at 44,998.
    assert quote.payment == payment_covering(POLICY, 2_000, 9_000) == 44_998
    assert POLICY.split_payment(44_998)["compute"] == 9_000
    with pytest.raises(NoOfferFits, match="raise the budget to at least 44,998"):
        quote_job_price(POLICY, pricing, offers, workers=2, budget=44_997, **kwargs)  # type: ignore[arg-type]
