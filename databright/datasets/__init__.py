"""Datasets: readers, contracts, canonical records, versions, lineage, shares and the registry.

Guide, in the order a contributed file meets them:

* ``formats`` / ``archives`` / ``limits`` — ``open_table(path, limits=, dialect=)``: CSV, Parquet and
  JSON Lines (plain, ``.gz`` or ``.zip``) streamed in chunks under caps; anything unreadable refused;
* ``contracts`` — ``load_contract(dir, kind)``: a kind's ``Schema`` and its Great Expectations suite;
  ``contract_tools`` — ``init_contract``, ``describe_contract``, ``check_file`` (a dry run);
* ``validation`` — ``Validator(contract).validate(chunk)``: schema drift refused whole
  (``SCHEMA_MISMATCH``), bad rows quarantined with reasons in a mergeable ``ContractReport``;
* ``canonical`` — ``record_id``/``record_ids``: sha256 of the canonical row bytes (the module
  docstring is the specification a worker implements against);
* ``near_duplicates`` — ``NearDuplicateFinder``: groups recorded in each version's manifest;
* ``versions`` — ``DatasetVersion`` and its folder (delta, withdrawals, quarantine, report, Merkle
  manifest); ``release`` hands a worker the files, verified;
* ``registry`` — ``Registry(db)``: datasets, versions, record owners, submissions, quarantine;
* ``ingest`` — ``stage_submission`` + ``publish_submission`` (or ``register_file`` for both);
* ``lineage`` — ``diff_versions``, ``pull_version`` (re-fetch and verify every digest);
* ``shares`` — ``dataset_shares``, ``withdraw_records``.

Importing this package does not import Great Expectations or DVC; they load when used.
"""

from databright.datasets.canonical import canonical_row_bytes, normalize_value, record_id, record_ids
from databright.datasets.contract_tools import check_file, describe_contract, init_contract
from databright.datasets.contracts import Column, Contract, Schema, available_kinds, load_contract
from databright.datasets.formats import Chunk, CsvDialect, ReadLimits, TableSource, open_table, read_table
from databright.datasets.ingest import (
    IngestResult,
    StagedSubmission,
    check_dataset_name,
    check_owner,
    publish_submission,
    register_file,
    stage_submission,
)
from databright.datasets.lineage import PullReport, VersionDiff, diff_versions, pull_version
from databright.datasets.near_duplicates import NearDuplicateFinder, NearDuplicates
from databright.datasets.registry import DatasetSummary, Registry, Submission
from databright.datasets.shares import (
    Shares,
    WithdrawResult,
    check_trainable,
    dataset_shares,
    withdraw_records,
)
from databright.datasets.validation import ContractReport, QuarantinedRow, ValidatedFrame, Validator, validate
from databright.datasets.versions import (
    DatasetVersion,
    Release,
    load_version_frame,
    read_manifest,
    release,
    release_files,
    version_folder,
    version_lock,
)

__all__ = [
    "Chunk",
    "Column",
    "Contract",
    "ContractReport",
    "CsvDialect",
    "DatasetSummary",
    "DatasetVersion",
    "IngestResult",
    "NearDuplicateFinder",
    "NearDuplicates",
    "PullReport",
    "QuarantinedRow",
    "ReadLimits",
    "Registry",
    "Release",
    "Schema",
    "Shares",
    "StagedSubmission",
    "Submission",
    "TableSource",
    "ValidatedFrame",
    "Validator",
    "VersionDiff",
    "WithdrawResult",
    "available_kinds",
    "canonical_row_bytes",
    "check_dataset_name",
    "check_file",
    "check_owner",
    "check_trainable",
    "dataset_shares",
    "describe_contract",
    "diff_versions",
    "init_contract",
    "load_contract",
    "load_version_frame",
    "normalize_value",
    "open_table",
    "publish_submission",
    "pull_version",
    "read_manifest",
    "read_table",
    "record_id",
    "record_ids",
    "register_file",
    "release",
    "release_files",
    "stage_submission",
    "validate",
    "version_folder",
    "version_lock",
    "withdraw_records",
]
