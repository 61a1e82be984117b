"""``audit_verify``: walk a period from its posted transfers back to the contributed files.

Every statement of the period is loaded, its signature by the stage key checked and its content
compared with its index row. Then the walk, each step one ``Link`` of the report::

    settle   transfers digest = the ledger's posted transfers; allocation root = the settlements row
             = the allocations table; policy digest, inputs digest, assurance = the settlements row;
             its jobs = the period's completed jobs; every holder statement file re-hashed
    value    (``audit_value``) the stored signed valuation re-hashed, its signature by the attested
             value session and its binding to the job's usage receipt checked; its values table
             re-derived; owner values re-derived = the settle statement's = the allocation weights
    train    stored receipt re-hashed and its signature by the attested session checked
             (``verify_usage_receipt``); model re-hashed; job spec re-hashed and matched to the
             receipt and the version; attestation result, task measurement, Merkle root = the receipt
    ingest / withdraw
             manifest re-hashed = registry = statement; every file of the version folder re-hashed
             against the manifest; a trained version's Merkle root recomputed from its record ids;
             contributed file = the registry's submission; contract; parent; withdrawn ids

Every input another stage produces (dataset manifests and roots, usage receipts and models,
valuation receipts) must be the subject of a verified statement of that stage with the same digest
(``Chain.producer``), so a deleted or edited statement is a broken link, and a statement resting on
a ``simulated`` one must say ``simulated`` itself. ``AuditReport.first_broken`` is the first failed
link in walk order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.crypto import PublicKey, digest_file, merkle_root_hex, sha256_hex
from databright.errors import ConfigError, IntegrityError, SettlementError
from databright.provenance import artifacts as names
from databright.provenance.audit_value import ValueWalk
from databright.provenance.chain import input_digest, subject_digest
from databright.provenance.report import AuditReport
from databright.provenance.statements import STAGES, ProvenanceLog, StageStatement, stage_public_key

if TYPE_CHECKING:
    from databright.config import Settings
    from databright.db import ExchangeDB
    from databright.storage.objectstore import ObjectStore
    from databright.trust.receipts import UsageReceipt


class _Walk(ValueWalk):
    def __init__(
        self,
        log: ProvenanceLog,
        *,
        period: str,
        workspace_dir: Path,
        statements_dir: Path,
        stage_key: PublicKey,
        verifier_key: PublicKey | None,
    ) -> None:
        super().__init__(log, stage_key, period=period, verifier_key=verifier_key)
        self.workspace_dir = workspace_dir
        self.statements_dir = statements_dir
        self.versions_done: set[tuple[str, int]] = set()

    # --- settle --------------------------------------------------------------------------------
    def settle(self, statements: list[StageStatement]) -> tuple[StageStatement | None, list[str]]:
        """Check the settle statement against the ledger; return it and the jobs it settled."""
        from databright.settlement.allocation import allocation_root
        from databright.settlement.period import completed_jobs
        from databright.settlement.store import read_allocations, read_settlement

        period, at = self.period, self.at("settle")
        with self.db.connect() as con:
            row = read_settlement(con, period)
            allocations = read_allocations(con, period)
        jobs = sorted(j.job_id for j in completed_jobs(self.db, period))
        settles = [s for s in statements if s.stage == "settle"]
        name = f"settlement:{period}"
        if row is None or row.state != "posted":
            if jobs or settles:
                state = row.state if row else "unsettled"
                at.link(name, "the period is posted", False, f"it is {state}; settle it before auditing it")
            return None, jobs
        if len(settles) != 1:
            at.link(name, "one settle statement", False, f"{len(settles)} found; a posted period has one")
            if not settles:
                return None, jobs
        s = settles[0]
        transfers, count = names.transfers_digest(self.db, period)
        at.same(
            f"transfers:{period}",
            "= sha256 over the ledger's posted transfers",
            transfers,
            subject_digest(s, f"transfers:{period}"),
            "the period's settlement transfers were changed",
        )
        at.same(f"transfers:{period}", "count = the statement's", count, s.parameters.get("transfers"))
        root = subject_digest(s, f"allocation-root:{period}")
        at.same(f"allocation-root:{period}", "= the settlements row", row.allocation_root, root)
        at.same(
            f"allocation-root:{period}",
            "= recomputed from the allocations",
            allocation_root(allocations),
            root,
        )
        inputs = subject_digest(s, f"settlement-inputs:{period}")
        at.same(f"settlement-inputs:{period}", "= the settlements row", row.inputs_digest, inputs)
        policy = next((a.digest for a in s.inputs if a.name.startswith("allocation-policy:")), None)
        at.same("allocation-policy", "= the settlements row's policy digest", policy, row.policy_digest)
        at.same(name, "assurance = the settlements row's", s.assurance, row.assurance)
        at.same(name, "jobs = the period's completed jobs", sorted(s.parameters.get("jobs", [])), jobs)
        for artifact in s.subjects:
            if artifact.name.startswith("holder-statement:"):
                path = self.statements_dir / period / artifact.name.rsplit("/", 1)[1]
                with at.step(artifact.name, "re-hashed = the statement"):
                    at.same(artifact.name, "re-hashed = the statement", digest_file(path), artifact.digest)
        self.producers_of_inputs(s)
        return s, jobs

    # --- train ---------------------------------------------------------------------------------
    def train(self, settle: StageStatement, job_id: str) -> None:
        from databright.trust import verify_usage_receipt
        from databright.trust.receipts import parse_receipt

        name, at = names.receipt_name(job_id), self.at("train")
        t = self._job_producer(settle, name, at, job_id)
        if t is None:
            return
        with at.step(name, "the job's stored receipt, model and spec = the statement"):
            period, status, receipt_key, model_key, model_digest = self.db.query(
                "SELECT period, status, receipt_key, model_key, model_digest FROM jobs WHERE job_id = ?",
                [job_id],
            )[0]
            at.same(f"job:{job_id}", "completed in the period", (period, status), (self.period, "completed"))
            envelope = names.load_envelope(self.store, receipt_key)
            at.same(
                name,
                "stored receipt re-hashed = the statement",
                names.envelope_digest(envelope),
                subject_digest(t, name),
            )
            with at.step(name, "signed by the attested session"):
                if self.verifier_key is None:
                    raise ConfigError(
                        "no verifier key in the home's keys/, so attestation results cannot be checked"
                    )
                verify_usage_receipt(self.db, self.store, self.verifier_key, envelope)
                at.link(name, "signed by the attested session", True)
            receipt = parse_receipt(envelope)
            model = sha256_hex(self.store.get_bytes(model_key))
            model_name = names.model_name(job_id)
            at.same(
                model_name, "stored model re-hashed = the statement", model, subject_digest(t, model_name)
            )
            at.same(
                model_name,
                "= the receipt's = the job's",
                (receipt.model_digest, model_digest),
                (model, model),
            )
            valuation = names.valuation_name(job_id)
            at.same(
                valuation, "= the receipt's", receipt.valuation.get("digest"), subject_digest(t, valuation)
            )
            task = f"task:{receipt.task}"
            at.same(task, "= the receipt's measurement", receipt.measurement, input_digest(t, task))
            at.same(f"job:{job_id}", "assurance = the receipt's attestation", t.assurance, receipt.assurance)
            result = f"attestation-result:{receipt.attestation_result_id}"
            stored = names.attestation_result_digest(self.db, receipt.attestation_result_id)
            at.same(result, "= the stored signed result", stored, input_digest(t, result))
            root = names.merkle_root_name(receipt.dataset, receipt.dataset_version)
            at.same(root, "= the receipt's dataset root", receipt.dataset_merkle_root, input_digest(t, root))
            self.job_spec(t, job_id, receipt)
        for producer in self.producers_of_inputs(t):
            self.version(producer, trained=True)

    def job_spec(self, t: StageStatement, job_id: str, receipt: UsageReceipt) -> None:
        from databright.datasets.registry import Registry

        name, at = f"job-spec:{job_id}", self.at("train")
        digest = input_digest(t, name)
        data = self.store.get_bytes(names.job_spec_key(str(digest)))
        at.same(name, "stored spec re-hashed = the statement", sha256_hex(data), digest)
        spec = json.loads(data)
        version = Registry(self.db).get_version(receipt.dataset, receipt.dataset_version)
        keys = ("run_id", "dataset_version", "expected_merkle_root", "attestation_result_id", "data_digests")
        expected = (
            receipt.run_id,
            receipt.dataset_version,
            receipt.dataset_merkle_root,
            receipt.attestation_result_id,
            list(version.data_digests),
        )
        at.same(name, "= the receipt and the version's files", tuple(spec[k] for k in keys), expected)
        validation = f"validation-file:{job_id}"
        found = (input_digest(t, validation), spec["validation_digest"])
        at.same(
            validation,
            "= the spec's = the receipt's",
            found,
            (receipt.valuation.get("validation_digest"),) * 2,
        )

    # --- ingest and withdraw -------------------------------------------------------------------
    def version(self, s: StageStatement, *, trained: bool = False) -> None:
        from databright.datasets.registry import Registry
        from databright.datasets.versions import WITHDRAWN_FILE, read_manifest

        dataset, number = s.parameters.get("dataset"), s.parameters.get("version")
        if (
            not isinstance(dataset, str)
            or not isinstance(number, int)
            or (dataset, number) in self.versions_done
        ):
            return
        self.versions_done.add((dataset, number))
        at, manifest_name = self.at(s.stage), names.version_name(dataset, number)
        root_name = names.merkle_root_name(dataset, number)
        with at.step(manifest_name, "re-hashed = the registry's = the statement"):
            found = Registry(self.db).get_version(dataset, number)
            manifest = read_manifest(self.workspace_dir, found)
            at.same(
                manifest_name,
                "re-hashed = the registry's = the statement",
                found.manifest_digest,
                subject_digest(s, manifest_name),
            )
            root = subject_digest(s, root_name)
            at.same(
                root_name,
                "= the registry's = the manifest's",
                (found.merkle_root, manifest["merkle_root"]),
                (root, root),
            )
            for file, digest in sorted(manifest["files"].items()):
                name = names.version_name(dataset, number, file)
                with at.step(name, "re-hashed = the manifest"):
                    on_disk = digest_file(self.workspace_dir / found.folder / file)
                    at.same(
                        name, "re-hashed = the manifest", on_disk, digest, "pull the version again from DVC"
                    )
                if s.subject(name) is not None:
                    at.same(name, "= the statement", subject_digest(s, name), digest)
            if trained:
                with at.step(root_name, "recomputed from the record ids"):
                    recomputed = self.recompute_root(manifest)
                    at.same(root_name, "recomputed from the record ids", recomputed, found.merkle_root)
            if s.stage == "ingest":
                self.ingest_inputs(s, manifest)
            else:
                withdrawn = f"withdrawn-ids:{dataset}@v{number}"
                registered = self.db.query(
                    "SELECT withdrawn_digest FROM withdrawals WHERE dataset = ? AND version = ?",
                    [dataset, number],
                )
                listed = (
                    registered[0][0] if registered else None,
                    manifest["files"].get(WITHDRAWN_FILE),
                )
                at.same(
                    withdrawn, "= the registry's = the manifest's", listed, (input_digest(s, withdrawn),) * 2
                )
            if found.parent is not None:
                parent = names.version_name(dataset, found.parent)
                at.same(
                    parent,
                    "= the manifest's parent",
                    input_digest(s, parent),
                    manifest["parent_manifest_digest"],
                )
        for producer in self.producers_of_inputs(s):
            self.version(producer)

    def ingest_inputs(self, s: StageStatement, manifest: dict[str, Any]) -> None:
        from databright.datasets.registry import Registry

        at = self.at("ingest")
        submission = Registry(self.db).get_submission(str(s.parameters.get("submission_id")))
        name = f"contributed-file:{submission.submission_id}"
        at.same(name, "= the registry's submission", input_digest(s, name), submission.file_digest)
        made = (submission.dataset, submission.version)
        at.same(name, "made this version", made, (manifest["dataset"], manifest["version"]))
        contract = f"contract:{manifest['contract_kind']}"
        at.same(contract, "= the manifest's", input_digest(s, contract), manifest["contract_digest"])
        report = names.version_name(manifest["dataset"], manifest["version"], "contract_report.json")
        at.same(
            report, "= the submission's report digest", subject_digest(s, report), submission.report_digest
        )

    def recompute_root(self, manifest: dict[str, Any]) -> str:
        """The Merkle root over the record ids of every delta, minus every withdrawal, in order."""
        import pyarrow.parquet as pq

        def ids(entry: dict[str, Any]) -> list[str]:
            path = self.workspace_dir / entry["path"]
            if digest_file(path) != entry["digest"]:
                raise IntegrityError(
                    f"{entry['path']} has sha256 {digest_file(path)[:16]}…, the manifest lists "
                    f"{entry['digest'][:16]}…; pull the version again from the DVC remote"
                )
            return [
                str(v) for v in pq.read_table(path, columns=["record_id"]).column("record_id").to_pylist()
            ]

        withdrawn = {rid for entry in manifest["withdrawals"] for rid in ids(entry)}
        live = [rid for entry in manifest["deltas"] for rid in ids(entry) if rid not in withdrawn]
        return merkle_root_hex([bytes.fromhex(rid) for rid in live])


def audit_period(
    db: ExchangeDB,
    store: ObjectStore,
    *,
    period: str,
    workspace_dir: Path,
    statements_dir: Path,
    stage_key: PublicKey,
    verifier_key: PublicKey | None,
) -> AuditReport:
    """Check every statement of ``period`` and walk its chain; see the module docstring.

    ``verifier_key`` checks the attestation results behind receipts; without it (a home that never
    trained) a period with jobs has a broken train link.
    """
    from databright.settlement.result import check_period

    check_period(period)
    log = ProvenanceLog(db, store)  # reads only; every statement is checked against ``stage_key``
    walk = _Walk(
        log,
        period=period,
        workspace_dir=workspace_dir,
        statements_dir=statements_dir,
        stage_key=stage_key,
        verifier_key=verifier_key,
    )
    rows = log.indexed(period=period)
    statements = [s for row in rows if (s := walk.load(row)) is not None]
    settle, jobs = walk.settle(statements)
    if not rows and not walk.links:
        raise SettlementError(
            f"period {period} has no provenance statements, completed jobs or settlement: nothing to audit; "
            "check the period (YYYY-MM)"
        )
    if settle is not None:
        for job_id in jobs:
            walk.value(settle, job_id)
        for job_id in jobs:
            walk.train(settle, job_id)
    for s in statements:
        if s.stage in ("ingest", "withdraw"):
            walk.version(s)
    counts = walk.verified_counts()
    return AuditReport(
        period=period,
        links=tuple(walk.links),
        statements={stage: counts[stage] for stage in STAGES if stage in counts},
        assurance=None if settle is None else settle.assurance,
    )


def audit_verify(settings: Settings, period: str | None = None) -> AuditReport:
    """Audit ``period`` (the settings' period by default) of the exchange in ``settings``' home."""
    from databright.trust.verifier import VERIFIER_KEY_FILE, load_verifier_key

    # Never made here: a fresh key would check nothing; a home that trained has one.
    has_verifier = (settings.keys_dir / VERIFIER_KEY_FILE).is_file()
    return audit_period(
        settings.exchange_db(),
        settings.object_store(),
        period=period or settings.period,
        workspace_dir=settings.workspace_dir,
        statements_dir=settings.statements_dir,
        stage_key=stage_public_key(settings.keys_dir),
        verifier_key=load_verifier_key(settings.keys_dir).public_key if has_verifier else None,
    )
