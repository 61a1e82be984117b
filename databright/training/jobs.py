"""Training jobs: what a trainer asked for, who ran it, what it cost, where its receipt is."""

from __future__ import annotations

DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id          VARCHAR PRIMARY KEY,
    period          VARCHAR NOT NULL,
    trainer_id      VARCHAR NOT NULL,
    dataset         VARCHAR NOT NULL,
    dataset_version INTEGER NOT NULL,
    task            VARCHAR NOT NULL,
    payment         HUGEINT NOT NULL CHECK (payment > 0),   -- minor units, escrowed at submit
    provider_id     VARCHAR,
    offer_id        VARCHAR,
    status          VARCHAR NOT NULL,                       -- escrowed | completed | failed
    receipt_key     VARCHAR,
    model_key       VARCHAR,
    model_digest    VARCHAR,
    work_units      BIGINT,
    created_at      TIMESTAMPTZ NOT NULL
);
"""
