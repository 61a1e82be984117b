"""Settings: the one composition root.

Only this module reads environment variables. Everything else receives a ``Settings`` (or the
plain paths and objects it hands out) and never looks at ``os.environ`` itself.

The home folder (``DATABRIGHT_HOME``, default ``./.databright``) holds everything the exchange
writes on one machine::

    .databright/
      exchange.duckdb     registry + ledger (one writer at a time)
      store/              local object store; store/dvc is also the DVC remote
      workspace/          DVC repository holding dataset version folders
      keys/               exchange keys (verifier, simulated vendor root and platform)
      prefect/            PREFECT_HOME: Prefect's SQLite database and settings
      statements/         per-period statements (text and JSON)
      ingest.lock         serialises ingests (dedup and versioning must see one another)

S3 is one setting away: with ``DATABRIGHT_S3_BUCKET`` set, ``object_store()`` is an
``S3ObjectStore`` on ``s3://<bucket>/<prefix>/`` and the DVC remote is ``s3://<bucket>/<prefix>/dvc``
(``DATABRIGHT_S3_ENDPOINT_URL`` for MinIO, Ceph or a test server; ``DATABRIGHT_S3_PREFIX``,
default ``databright``). Credentials and region come from the standard ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION``; left unset, boto3's usual chain applies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from databright.errors import ConfigError

if TYPE_CHECKING:
    from databright.db import ExchangeDB
    from databright.market.quotes import DataPricing
    from databright.settlement.policy import AllocationPolicy
    from databright.storage.dvc_versions import DvcRemote
    from databright.storage.objectstore import ObjectStore
    from databright.trust import AttestationPolicy, UsageReceipt, ValuationReceipt
    from databright.trust.intake import ReceiptIntake

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_S3_PREFIX = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")


def current_period(now: dt.datetime | None = None) -> str:
    """Settlement periods are calendar months in UTC, written ``YYYY-MM``."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m")


@dataclass(frozen=True)
class Settings:
    home: Path
    project_root: Path = PROJECT_ROOT
    period: str = ""
    db_lock_retries: int = 8
    # S3 (all None: the embedded local store). Secrets stay out of repr.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_prefix: str = "databright"
    aws_region: str | None = None
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)

    # A file that marks a folder as a DataBright home, so tools only ever delete homes they made.
    MARKER: ClassVar[str] = ".databright-home"

    # --- where things live -------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.home / "exchange.duckdb"

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def dvc_remote(self) -> Path | DvcRemote:
        """Where DVC pushes version folders: ``store/dvc``, or ``s3://<bucket>/<prefix>/dvc``."""
        if not self.s3_bucket:
            return self.store_dir / "dvc"
        from databright.storage.dvc_versions import DvcRemote

        prefix = self.s3_prefix.strip("/")
        return DvcRemote(
            url=f"s3://{self.s3_bucket}/{prefix + '/' if prefix else ''}dvc",
            endpoint_url=self.s3_endpoint_url,
            region=self.aws_region,
            access_key_id=self.aws_access_key_id,
            secret_access_key=self.aws_secret_access_key,
        )

    @property
    def dvc_remote_dir(self) -> Path | DvcRemote:
        """The same as ``dvc_remote`` (its older name; a folder unless S3 is configured)."""
        return self.dvc_remote

    @property
    def workspace_dir(self) -> Path:
        return self.home / "workspace"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def statements_dir(self) -> Path:
        return self.home / "statements"

    @property
    def contracts_dir(self) -> Path:
        return self.project_root / "data_contracts"

    @property
    def enclave_tasks_dir(self) -> Path:
        return self.project_root / "enclave_tasks"

    @property
    def attestation_policy_path(self) -> Path:
        return self.project_root / "policies" / "attestation.yaml"

    @property
    def allocation_policy_path(self) -> Path:
        return self.project_root / "policies" / "allocation.yaml"

    @property
    def pricing_policy_path(self) -> Path:
        return self.project_root / "policies" / "pricing.yaml"

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("DATABRIGHT_HOME", ".databright")).expanduser().resolve()
        period = env.get("DATABRIGHT_PERIOD") or current_period()
        if len(period) != 7 or period[4] != "-" or not (period[:4] + period[5:]).isdigit():
            raise ConfigError(
                f"DATABRIGHT_PERIOD={period!r} is not a period; write it as YYYY-MM, e.g. 2026-11"
            )
        endpoint = env.get("DATABRIGHT_S3_ENDPOINT_URL") or None
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"DATABRIGHT_S3_ENDPOINT_URL={endpoint!r} is not an http(s) URL; write it like "
                "http://127.0.0.1:9000, or unset it to use AWS"
            )
        prefix = env.get("DATABRIGHT_S3_PREFIX", "databright").strip("/")
        if prefix and not _S3_PREFIX.match(prefix):
            raise ConfigError(
                f"DATABRIGHT_S3_PREFIX={prefix!r} is not allowed: use letters, digits, '.', '_', '-' and "
                "'/' between parts (e.g. exchange/prod)"
            )
        return cls(
            home=home,
            period=period,
            s3_bucket=env.get("DATABRIGHT_S3_BUCKET") or None,
            s3_endpoint_url=endpoint,
            s3_prefix=prefix,
            aws_region=env.get("AWS_DEFAULT_REGION") or None,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        )

    def with_period(self, period: str) -> Settings:
        return dataclasses.replace(self, period=period)

    def ensure_dirs(self) -> Settings:
        for path in (
            self.home,
            self.store_dir,
            self.workspace_dir,
            self.keys_dir,
            self.prefect_home,
            self.statements_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
        (self.home / self.MARKER).touch()
        return self

    # --- backends --------------------------------------------------------------------------
    def exchange_db(self) -> ExchangeDB:
        from databright.db import ExchangeDB

        return ExchangeDB(self.db_path, retries=self.db_lock_retries)

    def object_store(self) -> ObjectStore:
        """The S3 store when a bucket is set, else the local directory ``store/``."""
        from databright.storage.objectstore import LocalObjectStore, S3ObjectStore

        if self.s3_bucket:
            return S3ObjectStore(
                self.s3_bucket,
                self.s3_prefix,
                self.s3_endpoint_url,
                region=self.aws_region,
                access_key_id=self.aws_access_key_id,
                secret_access_key=self.aws_secret_access_key,
            )
        return LocalObjectStore(self.store_dir)

    def attestation_policy(self) -> AttestationPolicy:
        from databright.trust import AttestationPolicy

        return AttestationPolicy.load(self.attestation_policy_path)

    def allocation_policy(self) -> AllocationPolicy:
        from databright.settlement.policy import AllocationPolicy

        return AllocationPolicy.load(self.allocation_policy_path)

    def data_pricing(self) -> DataPricing:
        from databright.market.quotes import DataPricing

        return DataPricing.load(self.pricing_policy_path)

    def receipt_verifier(self, db: ExchangeDB) -> Callable[[dict], UsageReceipt]:
        """What settlement uses to check a receipt: its signature, attestation result and evidence."""
        from databright.trust import load_verifier_key, verify_usage_receipt

        store = self.object_store()
        verifier_public_key = load_verifier_key(self.keys_dir).public_key
        return lambda envelope: verify_usage_receipt(db, store, verifier_public_key, envelope)

    def valuation_verifier(self, db: ExchangeDB) -> Callable[[dict], ValuationReceipt]:
        """What the value step and settlement use to check a signed valuation, like ``receipt_verifier``."""
        from databright.trust import load_verifier_key, verify_signed_valuation

        store = self.object_store()
        verifier_public_key = load_verifier_key(self.keys_dir).public_key
        return lambda envelope: verify_signed_valuation(db, store, verifier_public_key, envelope)

    def receipt_intake(self, db: ExchangeDB) -> ReceiptIntake:
        """Where settlement admits a period's receipts: chains per session, each receipt stored once."""
        from databright.trust import load_verifier_key
        from databright.trust.intake import ReceiptIntake

        return ReceiptIntake(db, self.object_store(), load_verifier_key(self.keys_dir).public_key)

    def prefect_env(self) -> dict[str, str]:
        """Environment Prefect must see before it is imported (set by the CLI, not by the library)."""
        return {
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
