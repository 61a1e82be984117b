"""Datasets: contracts, canonical records, versions and the registry.

Guide, in the order a contributed file meets them:

* ``contracts`` — ``load_contract(dir, kind)``: a kind's ``Schema`` (columns, features, label)
  and its Great Expectations suite;
* ``formats`` — ``read_table(path)``: CSV as strings, Parquet typed, anything unreadable refused;
* ``validation`` — ``validate(frame, contract)``: schema drift refused whole, bad rows quarantined
  with reasons in a ``ContractReport``, the rest typed;
* ``canonical`` — ``record_id``/``record_ids``: sha256 of the canonical row bytes (the module
  docstring is the specification a worker implements against);
* ``versions`` — ``DatasetVersion`` and its folder (delta Parquet, quarantine, report, Merkle
  manifest); ``load_version_frame`` and ``release_files`` read it back, verified;
* ``registry`` — ``Registry(db)``: datasets, versions, record owners, submissions, quarantine;
* ``ingest`` — ``register_file(settings, db, dataset=, contract_kind=, owner=, path=)`` runs the
  whole path and returns an ``IngestResult``.

Importing this package does not import Great Expectations or DVC; they load when used.
"""

from databright.datasets.canonical import canonical_row_bytes, normalize_value, record_id, record_ids
from databright.datasets.contracts import Column, Contract, Schema, available_kinds, load_contract
from databright.datasets.formats import read_table
from databright.datasets.ingest import IngestResult, check_dataset_name, check_owner, register_file
from databright.datasets.registry import DatasetSummary, Registry, Submission
from databright.datasets.validation import ContractReport, QuarantinedRow, ValidatedFrame, validate
from databright.datasets.versions import (
    DatasetVersion,
    load_version_frame,
    read_manifest,
    release_files,
    version_folder,
)

__all__ = [
    "Column",
    "Contract",
    "ContractReport",
    "DatasetSummary",
    "DatasetVersion",
    "IngestResult",
    "QuarantinedRow",
    "Registry",
    "Schema",
    "Submission",
    "ValidatedFrame",
    "available_kinds",
    "canonical_row_bytes",
    "check_dataset_name",
    "check_owner",
    "load_contract",
    "load_version_frame",
    "normalize_value",
    "read_manifest",
    "read_table",
    "record_id",
    "record_ids",
    "register_file",
    "release_files",
    "validate",
    "version_folder",
]
