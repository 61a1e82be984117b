"""The audit's ``value`` step: the owner values a period paid on, back to the signed valuation.

From the settle statement's ``valuation-receipt:<job>`` input the walk reaches the value statement
that produced it, then checks, each a ``Link`` at ``value``: the stored valuation envelope
(``valuations`` row) re-hashed = the statement's subject = the row's digest; its signature by the
attested value session (``verify_signed_valuation``); its binding to the job's stored usage receipt
(``check_binding``), which is also the receipt the value and settle statements consumed; model,
validation file, task measurement, Merkle root, values root and ``ValuationResult`` digest = the
receipt's, attestation result = the stored one; the stored values table re-derives the receipt's
values root and per-owner sums; and owner values re-derived with ``settled_job`` from both stored
receipts = the settle statement's ``owner-values:<job>`` subject = the data allocations' weights.
The value statement's own inputs then lead to ``train`` (usage receipt, model) and to the version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from databright.crypto import PublicKey
from databright.errors import ConfigError
from databright.provenance import artifacts as names
from databright.provenance.chain import At, Chain, input_digest, subject_digest
from databright.provenance.statements import ProvenanceLog, StageStatement

if TYPE_CHECKING:
    from databright.trust.valuation_receipts import ValuationReceipt


class ValueWalk(Chain):
    """A chain walked for one period, with the checks of the ``value`` step."""

    def __init__(
        self, log: ProvenanceLog, stage_key: PublicKey, *, period: str, verifier_key: PublicKey | None
    ) -> None:
        super().__init__(log, stage_key)
        self.period = period
        self.verifier_key = verifier_key

    def _job_producer(self, settle: StageStatement, name: str, at: At, job_id: str) -> StageStatement | None:
        """The statement producing job ``job_id``'s ``name``, once the settle statement consumed it."""
        if settle.input(name) is None:
            at.link(
                name, "consumed by the settle statement", False, f"the settle statement omits job {job_id}"
            )
            return None
        return self.producer(settle, name)

    # --- value ---------------------------------------------------------------------------------
    def value(self, settle: StageStatement, job_id: str) -> None:
        """From the settle statement's ``valuation-receipt:<job>`` to the value statement, the stored
        signed valuation and its values table, and the owner values the data share was paid on."""
        name, at = names.valuation_receipt_name(job_id), self.at("value")
        v = self._job_producer(settle, name, at, job_id)
        if v is None:
            return
        with at.step(name, "the job's stored valuation = the statement"):
            self.valuation(settle, v, job_id)
        self.producers_of_inputs(v)

    def valuation(self, settle: StageStatement, v: StageStatement, job_id: str) -> None:
        from databright.settlement.allocation import settled_job
        from databright.training.valuation_store import get_valuation
        from databright.trust import verify_signed_valuation
        from databright.trust.receipts import parse_receipt
        from databright.trust.valuation_receipts import check_binding, parse_valuation_receipt

        name, at = names.valuation_receipt_name(job_id), self.at("value")
        row = get_valuation(self.db, job_id)
        if row is None:
            at.link(name, "a valuations row", False, "the job has none; the exchange database was edited")
            return
        envelope = names.load_envelope(self.store, row.receipt_key)
        digest = names.envelope_digest(envelope)
        at.same(name, "stored valuation receipt re-hashed = the statement", digest, subject_digest(v, name))
        at.same(name, "= the valuations row's digest", digest, row.receipt_digest)
        with at.step(name, "signed by the attested session"):
            if self.verifier_key is None:
                raise ConfigError(
                    "no verifier key in the home's keys/, so attestation results cannot be checked"
                )
            verify_signed_valuation(self.db, self.store, self.verifier_key, envelope)
            at.link(name, "signed by the attested session", True)
        receipt = parse_valuation_receipt(envelope)
        trainer, payment, receipt_key = self.db.query(
            "SELECT trainer_id, payment, receipt_key FROM jobs WHERE job_id = ?", [job_id]
        )[0]
        usage_envelope = names.load_envelope(self.store, receipt_key)
        usage_digest = names.envelope_digest(usage_envelope)
        usage = parse_receipt(usage_envelope)
        with at.step(name, "values exactly the job's usage receipt"):
            check_binding(receipt, usage, usage_digest)
            at.link(name, "values exactly the job's usage receipt", True)
        used = names.receipt_name(job_id)
        at.same(
            used,
            "stored usage receipt = the value statement's input = the settle statement's",
            (input_digest(v, used), input_digest(settle, used)),
            (usage_digest, usage_digest),
        )
        self.valuation_inputs(v, job_id, receipt)
        self.values_table(v, job_id, row.values_key, receipt)
        facts = settled_job(
            job_id=job_id,
            trainer_id=trainer,
            provider_id=usage.provider_id,
            payment=int(payment),
            receipt=usage,
            receipt_digest=usage_digest,
            values={owner: part.value for owner, part in receipt.owners.items()},
            valuation_receipt_digest=digest,
        )
        at.same(name, "= the settle statement's input", digest, input_digest(settle, name))
        owners = names.owner_values_name(job_id)
        at.same(
            owners,
            "re-derived from the stored receipts = the settle statement",
            names.owner_values_digest(facts),
            subject_digest(settle, owners),
        )
        paid = self.db.query(
            "SELECT holder, weight FROM allocations WHERE period = ? AND job_id = ? AND role = 'data' "
            "AND basis = 'value'",
            [self.period, job_id],
        )
        if paid:
            weights = {f"contributor:{o.owner}": o.weight for o in facts.owners}
            at.same(owners, "= the data allocations' weights", {h: int(w) for h, w in paid}, weights)

    def valuation_inputs(self, v: StageStatement, job_id: str, receipt: ValuationReceipt) -> None:
        """What the value task read, as its signed receipt says, = what the value statement binds."""
        at = self.at("value")
        result = f"attestation-result:{receipt.attestation_result_id}"
        root = names.merkle_root_name(receipt.dataset, receipt.dataset_version)
        for artifact, found, signed in (
            (names.model_name(job_id), input_digest(v, names.model_name(job_id)), receipt.model_digest),
            (
                f"validation-file:{job_id}",
                input_digest(v, f"validation-file:{job_id}"),
                receipt.validation_digest,
            ),
            (f"task:{receipt.task}", input_digest(v, f"task:{receipt.task}"), receipt.measurement),
            (root, input_digest(v, root), receipt.dataset_merkle_root),
            (names.values_name(job_id), subject_digest(v, names.values_name(job_id)), receipt.values_root),
            (
                names.valuation_result_name(job_id),
                subject_digest(v, names.valuation_result_name(job_id)),
                receipt.valuation_digest,
            ),
        ):
            at.same(artifact, "= the valuation receipt's", found, signed)
        stored = names.attestation_result_digest(self.db, receipt.attestation_result_id)
        at.same(result, "= the stored signed result", stored, input_digest(v, result))
        at.same(f"job:{job_id}", "value assurance = the valuation receipt's", v.assurance, receipt.assurance)

    def values_table(self, v: StageStatement, job_id: str, key: str, receipt: ValuationReceipt) -> None:
        """The stored values table re-derives the receipt's values root and its per-owner sums."""
        import io

        import pyarrow.parquet as pq

        from databright.trust.valuation_receipts import owner_values, values_root

        name, at = names.values_name(job_id), self.at("value")
        with at.step(name, "re-derived from the stored values table"):
            table = pq.read_table(
                io.BytesIO(self.store.get_bytes(key)), columns=["owner", "record_id", "value"]
            )
            owners = [str(o) for o in table.column("owner").to_pylist()]
            ids = [str(r) for r in table.column("record_id").to_pylist()]
            values = [float(x) for x in table.column("value").to_pylist()]
            at.same(
                name,
                "values table's Merkle root = the valuation receipt's",
                values_root(zip(owners, ids, values, strict=True)),
                receipt.values_root,
            )
            at.same(
                name,
                "values table's per-owner sums = the valuation receipt's",
                owner_values(owners, values),
                receipt.owners,
            )
