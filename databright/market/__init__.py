"""The compute market: providers, their attested offers, quotes and allocation.

* ``offers`` — providers and the offers their attested workers open (tables + functions).
* ``allocation`` — ``Quote`` and ``choose_offer``: the cheapest attested offer that fits a job.
* ``pool`` — ``LocalPool``: starts provider worker processes, attests them, opens their offers.
"""

from databright.market.allocation import Quote, choose_offer, choose_offers
from databright.market.offers import (
    Offer,
    Provider,
    list_offers,
    list_providers,
    open_offer,
    register_provider,
    withdraw_offer,
)

__all__ = [
    "Offer",
    "Provider",
    "Quote",
    "choose_offer",
    "choose_offers",
    "list_offers",
    "list_providers",
    "open_offer",
    "register_provider",
    "withdraw_offer",
]
