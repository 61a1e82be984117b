"""The one error tree of DataBright.

Every error a user can cause is a ``DatabrightError``; its message says what happened, with the
offending value, and what to do next. The CLI prints ``ErrorName: message`` and exits 1.

    DatabrightError
    ├── ConfigError                      settings or a policy file is unusable
    ├── StorageError                     object store / DVC failure (translated at the boundary)
    ├── RegistryError                    the exchange database refused or is locked
    ├── DatasetError
    │   ├── UnknownDataset (KeyError)
    │   ├── UnknownContract (KeyError)
    │   ├── UnreadableFile               the file cannot be parsed as the declared format
    │   ├── SchemaMismatch               columns missing, extra, reordered or retyped: refused whole
    │   └── NothingAccepted              every row was quarantined or a duplicate
    ├── IntegrityError                   a digest or Merkle root does not match the data
    ├── AttestationError                 evidence failed appraisal (carries a reason code)
    ├── ReceiptRejected                  a usage receipt failed signature or attestation checks
    ├── ValuationError (ValueError)      valuation inputs are unusable (shapes, labels, k)
    ├── MarketError
    │   └── NoOfferFits                  no attested offer fits the job's budget
    ├── TrainingError                    the enclave task failed
    ├── LedgerError
    │   ├── LedgerConflict               a transfer id exists with different content
    │   └── LedgerInvariantBroken        `ledger verify` found a broken invariant
    └── SettlementError
        └── SettlementConflict           a posted period was asked to settle different inputs
"""

from __future__ import annotations

from typing import Any


class DatabrightError(Exception):
    """Base of every error DataBright raises on purpose."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class ConfigError(DatabrightError):
    pass


class StorageError(DatabrightError):
    pass


class RegistryError(DatabrightError):
    pass


class DatasetError(DatabrightError):
    pass


class UnknownDataset(DatasetError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class UnknownContract(DatasetError, KeyError):
    def __str__(self) -> str:
        return self.message


class UnreadableFile(DatasetError):
    pass


class SchemaMismatch(DatasetError):
    """Columns missing, extra, reordered or retyped; the message starts with the stable ``code``."""

    code = "SCHEMA_MISMATCH"

    def __init__(self, message: str, **context: Any) -> None:
        prefix = f"{self.code}: "
        super().__init__(message if message.startswith(prefix) else prefix + message, **context)


class NothingAccepted(DatasetError):
    pass


class IntegrityError(DatabrightError):
    pass


class AttestationError(DatabrightError):
    """Evidence failed appraisal; ``code`` is a stable reason such as ``NONCE_REUSED``."""

    def __init__(self, code: str, message: str, **context: Any) -> None:
        super().__init__(f"{code}: {message}", code=code, **context)
        self.code = code


class ReceiptRejected(DatabrightError):
    pass


class MarketError(DatabrightError):
    pass


class NoOfferFits(MarketError):
    pass


class TrainingError(DatabrightError):
    pass


class LedgerError(DatabrightError):
    pass


class LedgerConflict(LedgerError):
    pass


class LedgerInvariantBroken(LedgerError):
    pass


class SettlementError(DatabrightError):
    pass


class SettlementConflict(SettlementError):
    pass


class ValuationError(DatabrightError, ValueError):
    """Inputs to a valuation method are unusable (shapes, labels, non-finite values, k)."""


class StackError(DatabrightError):
    """The local stack (``databright stack``) could not start, or one of its parts failed."""
