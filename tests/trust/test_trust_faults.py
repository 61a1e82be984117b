"""Index of issue 5's "Bad input and faults (each a test)": every item, and the tests that cover it.

Each item names its tests as ``path::name``; ``test_the_index_names_only_tests_that_exist`` keeps
this table honest. Key release and sealed shards (items 20, 21) are being wired end to end by the
key-release work: their end-to-end tests go to ``tests/trust/test_trust_key_release_e2e.py`` (being
written), beside the unit tests in ``tests/trust/test_trust_keys.py``. Tests with no better home
live at the bottom of this file.

 1. Any single field of simulated evidence changed (every field, nothing re-signed) → rejected
      tests/trust/test_trust_verifier.py::test_any_single_field_changed_without_re_signing_is_refused
      tests/trust/test_trust_verifier.py::test_the_change_tables_name_every_field_of_simulated_evidence
      tests/trust/test_trust_verifier.py::test_a_host_holding_the_platform_key_still_cannot_change_any_quote_field
      tests/trust/test_trust_simulated.py::test_signatures_fail_on_every_flipped_byte
 2. Wrong nonce
      tests/trust/test_trust_verifier.py::test_unknown_nonce
      tests/trust/test_trust_verifier.py::test_evidence_bound_to_another_nonce_is_binding_mismatch
 3. Reused nonce
      tests/trust/test_trust_verifier.py::test_reused_nonce
      tests/trust/test_trust_hardware.py::test_a_nonce_admits_one_hardware_appraisal_bound_to_one_key
 4. Expired nonce
      tests/trust/test_trust_verifier.py::test_expired_nonce_stores_nothing
 5. Evidence binding key A with receipts signed by key B
      tests/trust/test_trust_intake.py::test_evidence_binding_key_a_with_receipts_signed_by_key_b
      tests/trust/test_trust_verifier.py::test_evidence_bound_to_another_session_key_is_binding_mismatch
 6. Unapproved measurement
      tests/trust/test_trust_verifier.py::test_wrong_measurement
      tests/trust/test_trust_verifier.py::test_task_missing_from_policy
      tests/trust/test_trust_verifier.py::test_measurement_allowed_for_one_task_does_not_admit_another
      tests/trust/test_trust_hardware.py::test_identity_rules_refuse_the_sgx_sample_with_their_code
 7. Debug enclave
      tests/trust/test_trust_verifier.py::test_debug_enclave
      tests/trust/test_trust_hardware.py::test_debug_enclaves_and_low_svn_are_refused
 8. svn below minimum
      tests/trust/test_trust_verifier.py::test_low_svn
      tests/trust/test_trust_hardware.py::test_debug_enclaves_and_low_svn_are_refused
 9. Simulated evidence under the production policy
      tests/trust/test_trust_verifier.py::test_production_policy_refuses_simulated
      tests/trust/test_trust_policy.py::test_production_policy_refuses_simulated_and_debug
10. Real SGX sample passes at its pinned time with the documented status and advisories
      tests/trust/test_trust_hardware.py::test_sgx_sample_passes_at_its_pinned_time_with_the_documented_status
11. Strict policy refuses the SGX sample
      tests/trust/test_trust_hardware.py::test_strict_policy_refuses_the_sgx_sample_until_its_status_is_allowed_then_an_advisory_denies_it
12. One flipped bit anywhere in MRENCLAVE / ISVSVN / REPORTDATA / signature refuses
      tests/trust/test_trust_hardware.py::test_one_flipped_bit_in_the_sgx_quote_is_refused
      tests/trust/test_trust_hardware.py::test_any_bit_of_header_report_or_signature_is_covered
      tests/trust/test_trust_hardware.py::test_one_flipped_bit_in_the_td_report_is_refused
13. Verification at today's date fails on expired CRLs
      tests/trust/test_trust_hardware.py::test_both_samples_fail_today_because_the_crls_expired
14. Forged receipt
      tests/trust/test_trust_intake.py::test_forged_receipt_signed_by_another_key
      tests/trust/test_trust_receipts.py::test_receipt_signed_by_another_key
      tests/trust/test_trust_receipts.py::test_any_flipped_byte_breaks_the_receipt_signature
      tests/trust/test_trust_receipts.py::test_a_receipt_envelope_of_the_wrong_shape_is_a_bad_signature_not_a_crash
15. Replayed receipt (counted once)
      tests/trust/test_trust_intake.py::test_replayed_receipt_is_stored_and_counted_once
      tests/trust/test_trust_intake.py::test_a_duplicate_inside_one_batch_is_counted_once
      tests/trust/test_trust_intake.py::test_two_threads_admitting_the_same_receipt_store_it_once
16. Equivocation
      tests/trust/test_trust_intake.py::test_equivocation_quarantines_the_session
      tests/trust/test_trust_intake.py::test_only_the_session_key_can_get_its_session_quarantined
17. Wrong period
      tests/trust/test_trust_intake.py::test_wrong_period
18. Expired attestation
      tests/trust/test_trust_intake.py::test_expired_attestation
      tests/trust/test_trust_receipts.py::test_receipt_issued_after_the_result_expired
      tests/trust/test_trust_keys.py::test_an_expired_result_gets_nothing
19. Unknown or mismatched dataset root
      tests/trust/test_trust_intake.py::test_unknown_dataset_root
      tests/trust/test_trust_intake.py::test_mismatched_dataset_root
20. Tampered shard bytes (detected before training, job aborted, no receipt)
      tests/trust/test_trust_keys.py::test_flipping_any_byte_is_refused_naming_the_file_and_chunk
      tests/trust/test_trust_keys.py::test_open_release_refuses_tampered_files_and_missing_keys
      tests/training/test_training_runner.py::test_tampered_record_is_refused
      tests/trust/test_trust_key_release_e2e.py (being written: the job aborts before training, no receipt)
21. A worker asking for a data key without a valid attestation
      tests/trust/test_trust_keys.py::test_no_result_gets_nothing
      tests/trust/test_trust_keys.py::test_unknown_result_gets_nothing
      tests/trust/test_trust_keys.py::test_an_edited_result_object_gets_nothing
      tests/trust/test_trust_keys.py::test_a_result_whose_status_is_not_ok_gets_nothing
      tests/trust/test_trust_keys.py::test_an_expired_result_gets_nothing
      tests/trust/test_trust_key_release_e2e.py (being written: an unattested worker reads no dataset)
22. A compute claim larger than wall-clock × devices (flagged, paid by work units only)
      tests/trust/test_trust_intake.py::test_a_compute_claim_larger_than_wall_clock_is_admitted_flagged_and_stored
      tests/trust/test_trust_intake.py::test_in_a_batch_a_flagged_receipt_is_flagged_and_a_refused_one_stores_no_flag
      tests/trust/test_trust_receipts.py::test_the_flag_threshold_is_devices_times_wall_clock_plus_the_stated_tolerance
      tests/trust/test_trust_receipts.py::test_honest_claims_are_never_flagged_and_inflated_ones_always_are
      tests/trust/test_trust_receipts.py::test_a_receipt_without_a_compute_claim_keeps_its_bytes
      tests/trust/test_trust_faults.py::test_a_flagged_compute_claim_moves_no_money
23. An edited provenance statement
      tests/provenance/test_provenance_period.py::test_one_altered_byte_of_a_stored_statement_names_its_stage
      tests/provenance/test_provenance_period.py::test_a_statement_re_signed_by_another_key_names_its_stage
      tests/provenance/test_provenance_statements.py::test_one_changed_payload_byte_or_another_key_is_refused
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

from trust_testkit import MEASUREMENT, NOW, TASK

from databright.settlement.allocation import allocate_job, settled_job
from databright.settlement.policy import AllocationPolicy
from databright.trust import OwnerUsage, UsageReceipt
from databright.trust.intake import receipt_flags
from databright.trust.receipts import ComputeClaim

REPO = Path(__file__).resolve().parents[2]
# Test files another engineer is writing now; the index may name them before they exist.
BEING_WRITTEN = {"tests/trust/test_trust_key_release_e2e.py"}
ITEMS = 23


def _index() -> dict[int, list[tuple[str, str | None]]]:
    """Item number -> [(path, test name or None)], read from this module's docstring."""
    items: dict[int, list[tuple[str, str | None]]] = {}
    current = 0
    for line in (__doc__ or "").splitlines():
        head = re.match(r"^\s*(\d+)\. ", line)
        if head:
            current = int(head.group(1))
            items[current] = []
            continue
        ref = re.match(r"^\s+(tests/\S+\.py)(?:::(\w+))?", line)
        if ref and current:
            items[current].append((ref.group(1), ref.group(2)))
    return items


def test_the_index_names_only_tests_that_exist():
    items = _index()
    assert sorted(items) == list(range(1, ITEMS + 1))
    for number, refs in items.items():
        present = [(path, name) for path, name in refs if (REPO / path).is_file()]
        assert present, f"item {number} names no test file that exists"
        for path, name in refs:
            if not (REPO / path).is_file():
                assert path in BEING_WRITTEN, f"item {number}: {path} does not exist"
                continue
            if name is not None:
                source = (REPO / path).read_text(encoding="utf-8")
                assert re.search(rf"^def {name}\(", source, re.M), f"item {number}: no {name} in {path}"


# --- tests with no better home ----------------------------------------------------------------


def _receipt(**changes) -> UsageReceipt:
    base = UsageReceipt(
        period="2026-11",
        job_id="job-1",
        run_id="run-1",
        provider_id="prov-a",
        attestation_result_id="ar-0001",
        assurance="simulated",
        measurement=MEASUREMENT,
        task=TASK,
        dataset="adult",
        dataset_version=2,
        dataset_merkle_root="12" * 32,
        owners={"alice": OwnerUsage(2, 5, 0.75), "bob": OwnerUsage(1, 1, 0.25)},
        records_root="34" * 32,
        valuation={"method": "knn-shapley", "params": {"k": 5}, "validation_digest": "56" * 32},
        work_units=600,
        model_digest="78" * 32,
        sequence=0,
        previous_receipt_digest=None,
        issued_at=(NOW + dt.timedelta(minutes=1)).isoformat(),
    )
    return dataclasses.replace(base, **changes)


def test_a_flagged_compute_claim_moves_no_money():
    """Settlement pays compute by attested work units only: a claim, however large, changes no row.

    ``settlement.allocation.allocate_job`` gives the provider the policy's compute share of the job's
    payment with basis ``work_units``; ``settlement.period`` checks those against the work units the
    job was priced at. Neither reads ``compute``.
    """
    policy = AllocationPolicy(name="faults", version=1)  # 70 % data, 20 % compute, 10 % fee
    plain = _receipt()
    inflated = _receipt(compute=ComputeClaim(devices=8, wall_clock_s=1.0, device_seconds=1e9))
    assert [flag for flag, _ in receipt_flags(inflated)] == ["COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK"]
    assert receipt_flags(plain) == ()

    def allocations(receipt: UsageReceipt):
        job = settled_job(
            job_id=receipt.job_id,
            trainer_id="acme",
            provider_id=receipt.provider_id,
            payment=90_000,
            receipt=receipt,
            receipt_digest="9a" * 32,
            values={owner: usage.value for owner, usage in receipt.owners.items()},
            valuation_receipt_digest="9b" * 32,
        )
        return allocate_job(policy, receipt.period, job)

    rows = allocations(inflated)
    assert rows == allocations(plain)
    compute = [(a.holder, a.basis, a.weight, a.amount) for a in rows if a.role == "compute"]
    assert compute == [("provider:prov-a", "work_units", 600, 18_000)]  # 20 % of 90 000
    assert sum(a.amount for a in rows) == 90_000
