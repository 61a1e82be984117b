"""Providers and their offers: who sells compute, at what price, under which attestation.

An offer is only *attested* while it points at a valid attestation result; the market never
allocates work to an offer without one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from databright.db import ExchangeDB

DDL = """
CREATE TABLE IF NOT EXISTS providers (
    provider_id   VARCHAR PRIMARY KEY,
    price_per_unit HUGEINT NOT NULL CHECK (price_per_unit > 0),  -- minor units per work unit
    capacity      BIGINT NOT NULL CHECK (capacity > 0),          -- work units per job
    tee_type      VARCHAR NOT NULL,
    registered_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS offers (
    offer_id              VARCHAR PRIMARY KEY,
    provider_id           VARCHAR NOT NULL,
    session_public_key    VARCHAR NOT NULL,
    attestation_result_id VARCHAR NOT NULL,
    assurance             VARCHAR NOT NULL,
    price_per_unit        HUGEINT NOT NULL,
    capacity              BIGINT NOT NULL,
    status                VARCHAR NOT NULL,   -- open | withdrawn
    opened_at             TIMESTAMPTZ NOT NULL
);
"""


@dataclass(frozen=True)
class Provider:
    provider_id: str
    price_per_unit: int
    capacity: int
    tee_type: str = "simulated"


@dataclass(frozen=True)
class Offer:
    offer_id: str
    provider_id: str
    session_public_key: str
    attestation_result_id: str
    assurance: str
    price_per_unit: int
    capacity: int
    status: str


def register_provider(db: ExchangeDB, provider: Provider) -> Provider:
    """Record (or update the price and capacity of) a hardware provider."""
    with db.transaction() as con:
        con.execute(
            """INSERT INTO providers VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (provider_id) DO UPDATE SET price_per_unit = excluded.price_per_unit,
                   capacity = excluded.capacity, tee_type = excluded.tee_type""",
            [
                provider.provider_id,
                provider.price_per_unit,
                provider.capacity,
                provider.tee_type,
                dt.datetime.now(dt.UTC),
            ],
        )
    return provider


def list_providers(db: ExchangeDB) -> list[Provider]:
    rows = db.query(
        "SELECT provider_id, price_per_unit, capacity, tee_type FROM providers ORDER BY provider_id"
    )
    return [Provider(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]


def open_offer(db: ExchangeDB, offer: Offer) -> Offer:
    with db.transaction() as con:
        con.execute(
            "INSERT INTO offers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                offer.offer_id,
                offer.provider_id,
                offer.session_public_key,
                offer.attestation_result_id,
                offer.assurance,
                offer.price_per_unit,
                offer.capacity,
                offer.status,
                dt.datetime.now(dt.UTC),
            ],
        )
    return offer


def withdraw_offer(db: ExchangeDB, offer_id: str) -> None:
    with db.transaction() as con:
        con.execute("UPDATE offers SET status = 'withdrawn' WHERE offer_id = ?", [offer_id])


def list_offers(db: ExchangeDB, *, status: str | None = None) -> list[Offer]:
    sql = (
        "SELECT offer_id, provider_id, session_public_key, attestation_result_id, assurance, "
        "price_per_unit, capacity, status FROM offers"
    )
    params: list[object] = []
    if status:
        sql += " WHERE status = ?"
        params.append(status)
    rows = db.query(sql + " ORDER BY opened_at, offer_id", params)
    return [Offer(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), r[7]) for r in rows]
