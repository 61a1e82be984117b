"""Prefect flows: thin wiring over ``databright``.

Each flow takes one pydantic config model (its fields render as the Prefect UI's run form), calls
library functions as tasks, publishes artifacts for review, and returns the library's typed result.

* ``ingest`` — register a contributor's file into a dataset version.
* ``train``  — quote, escrow, attest the pool, run the enclave task, store the signed receipt.
* ``settle`` — verify the period's receipts, split every payment, post the ledger, write statements.
* ``demo``   — one whole period on synthetic data, through the three flows above.
"""
