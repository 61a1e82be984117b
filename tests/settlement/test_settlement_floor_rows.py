"""Two data rows per (job, holder) under a usage floor: stored by the bulk ``replace_allocations``
(the primary key includes ``basis``) and summed into one statement line per job, so a contributor's
statement total is what they were allocated. Amounts past int64 stay exact."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from databright.db import ExchangeDB
from databright.settlement import AllocationPolicy
from databright.settlement.allocation import OwnerLine, SettledJob, allocate_job, allocation_root
from databright.settlement.result import Settlement
from databright.settlement.statements import _contributor_lines, build_statements, render_statement
from databright.settlement.store import claim, read_allocations, replace_allocations

PERIOD = "2026-11"
HUGE = 10**30
FLOOR = AllocationPolicy(name="floor", version=2, usage_floor_bps=2_000)
V1 = AllocationPolicy(name="plain", version=1)


def job(n: int, payment: int, owners: dict[str, tuple[int, int]], trainer: str = "acme") -> SettledJob:
    """A settled job whose owners map to (rows used, value weight)."""
    return SettledJob(
        job_id=f"job-{n}", trainer_id=trainer, provider_id="p1", payment=payment, dataset="d",
        dataset_version=1, dataset_merkle_root="a" * 64, records_root="b" * 64, work_units=10,
        assurance="simulated", attestation_result_id="ar-1", receipt_digest="c" * 64,
        valuation_receipt_digest="d" * 64,
        owners=tuple(OwnerLine(o, rows, rows * 2, w / 1e9, w) for o, (rows, w) in sorted(owners.items())),
    )  # fmt: skip


def settlement(policy: AllocationPolicy, jobs: list[SettledJob]) -> Settlement:
    allocations = [a for j in jobs for a in allocate_job(policy, PERIOD, j)]
    totals: dict[str, int] = {}
    for a in allocations:
        if a.role != "fee":
            totals[a.holder] = totals.get(a.holder, 0) + a.amount
    return Settlement(
        period=PERIOD, state="posted", inputs_digest="e" * 64, policy_version=policy.version,
        policy_digest=policy.digest, allocation_root=allocation_root(allocations), assurance="simulated",
        approver="test", allocations=tuple(allocations), totals=totals, jobs=tuple(jobs), policy=policy,
    )  # fmt: skip


def test_two_data_rows_per_job_and_holder_store_exactly_and_replace(memory_db: ExchangeDB):
    floor = settlement(FLOOR, [job(1, HUGE + 3, {"alice": (3, 700), "bob": (1, 300)})])
    rows = list(floor.allocations)
    bases = sorted(a.basis for a in rows if a.holder == "contributor:alice")
    assert bases == ["usage_floor", "value"]
    with memory_db.transaction() as con:
        claim(con, PERIOD)
        replace_allocations(con, PERIOD, rows)
        assert sorted(read_allocations(con, PERIOD), key=repr) == sorted(rows, key=repr)
    assert sum(a.amount for a in rows) == HUGE + 3
    stored_total = memory_db.query("SELECT SUM(amount), typeof(SUM(amount)) FROM allocations")[0]
    assert int(stored_total[0]) == HUGE + 3
    body = json.loads(memory_db.query("SELECT body FROM audit_log WHERE kind = 'allocations'")[0][0])
    assert (body["rows"], body["amount"], body["allocation_root"]) == (
        len(rows),
        str(HUGE + 3),
        floor.allocation_root,
    )
    # A re-proposal replaces the rows whole; an empty proposal leaves none.
    again = settlement(FLOOR, [job(1, 1_000, {"alice": (3, 700)})])
    with memory_db.transaction() as con:
        replace_allocations(con, PERIOD, list(again.allocations))
        assert sorted(read_allocations(con, PERIOD), key=repr) == sorted(again.allocations, key=repr)
        replace_allocations(con, PERIOD, [])
        assert read_allocations(con, PERIOD) == []


def test_a_statement_line_sums_the_usage_floor_and_value_rows_of_its_job():
    # job-2: alice used no rows, so her usage_floor row is 0 and the floor joins the value part.
    s = settlement(
        FLOOR, [job(1, 1_000_000, {"alice": (3, 700), "bob": (1, 300)}), job(2, 500_000, {"alice": (0, 1)})]
    )
    by_basis = {(a.job_id, a.holder, a.basis): a for a in s.allocations}
    alice = next(stmt for stmt in build_statements(s) if stmt.holder == "contributor:alice")
    assert [line["job_id"] for line in alice.lines] == ["job-1", "job-2"]
    for line in alice.lines:
        floor = by_basis[(line["job_id"], "contributor:alice", "usage_floor")]
        value = by_basis[(line["job_id"], "contributor:alice", "value")]
        assert line["basis"] == "usage_floor+value"
        assert line["weight"] == value.weight
        assert (line["amount"], line["usage_floor_amount"]) == (floor.amount + value.amount, floor.amount)
        assert line["amount_text"] == FLOOR.format_amount(line["amount"])
    assert alice.total == s.totals["contributor:alice"]
    text = render_statement(alice)
    assert "(basis: usage_floor+value)" in text and "of which usage floor" in text


def test_without_a_floor_lines_keep_their_single_basis_format():
    s = settlement(V1, [job(1, 1_000_000, {"alice": (3, 700), "bob": (1, 0)}), job(2, 10, {"bob": (4, 0)})])
    bob = next(stmt for stmt in build_statements(s) if stmt.holder == "contributor:bob")
    assert [(line["basis"], line["weight"]) for line in bob.lines] == [("value", 0), ("rows_used", 4)]
    assert all("usage_floor_amount" not in line for line in bob.lines)
    assert "of which usage floor" not in render_statement(bob)


owner_ids = st.sampled_from(["alice", "bob", "carol", "dave"])
job_owners = st.dictionaries(owner_ids, st.tuples(st.integers(0, 50), st.integers(0, 10**6)), min_size=1)


@settings(max_examples=40, deadline=None)
@given(
    floor_bps=st.sampled_from([0, 1, 2_500, 10_000]),
    jobs=st.lists(
        st.tuples(st.integers(1, 10**20), job_owners, st.sampled_from(["acme", "globex"])), max_size=5
    ),
)
def test_every_statement_total_is_the_holders_allocations_and_one_pass_matches_per_holder(floor_bps, jobs):
    policy = AllocationPolicy(name="p", version=2, usage_floor_bps=floor_bps)
    # Owners with neither rows nor value leave a data share with no basis; give each one row.
    settled = [
        job(n, pay, {o: (max(rows, 1), w) for o, (rows, w) in owners.items()}, trainer)
        for n, (pay, owners, trainer) in enumerate(jobs)
    ]
    s = settlement(policy, settled)
    statements = build_statements(s)
    for statement in statements:
        if statement.kind == "trainer":
            mine = [j for j in settled if f"trainer:{j.trainer_id}" == statement.holder]
            assert statement.total == sum(j.payment for j in mine)
            continue
        allocated = sum(a.amount for a in s.allocations if a.holder == statement.holder)
        assert statement.total == allocated
        assert len({line["job_id"] for line in statement.lines}) == len(statement.lines)
        if statement.kind == "contributor":
            assert list(statement.lines) == _contributor_lines(s, statement.holder)
    paid = {a.holder for a in s.allocations if a.role != "fee"}
    assert {stmt.holder for stmt in statements if stmt.kind != "trainer"} == paid
