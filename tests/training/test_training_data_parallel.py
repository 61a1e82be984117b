"""Data-parallel training without processes: two shards of a job train in two threads whose
``reduce`` is a barrier-synchronised sum, and must give the single-worker model, visits and in-run
contributions to rounding; shards, part ids and exact payment splits; choosing several offers."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from training_fixtures import ENCLAVE_TASKS, FEATURES, BarrierSum, separable

from databright.errors import NoOfferFits, TrainingError
from databright.market import Offer, Quote, choose_offers
from databright.training import load_task
from databright.training.data_parallel import DataShard, Rendezvous, shard_bounds
from databright.training.parts import part_id, split_amount

TOLERANCE = 1e-9


def _state(out: Any) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(out.model_state), weights_only=True)


@pytest.mark.parametrize("task_name", ["tabular_logreg", "tabular_mlp"])
def test_two_shards_train_the_single_worker_model(task_name: str) -> None:
    rng = np.random.default_rng(4)
    frame, validation = separable(rng, 203), separable(rng, 50)
    x, y = frame[FEATURES].to_numpy(), frame["label"].to_numpy()
    xv, yv = validation[FEATURES].to_numpy(), validation["label"].to_numpy()
    task = load_task(ENCLAVE_TASKS, task_name)
    config = task.resolve_config({"epochs": 3})
    single = task.train(x, y, config, 11, x_val=xv, y_val=yv)

    reducer = BarrierSum(2)

    def rank(k: int) -> Any:
        shard = DataShard(k, 2, len(x), reducer.for_rank(k))
        rows = slice(shard.start, shard.stop)
        # Each thread trains on one torch thread; the task sets that itself.
        return task.train(x[rows], y[rows], config, 11, x_val=xv, y_val=yv, shard=shard)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(rank, (0, 1))

    one, two, also = _state(single), _state(first), _state(second)
    for name in one:
        assert torch.equal(two[name], also[name]), f"the shards ended with different {name}"
        assert torch.allclose(one[name], two[name], rtol=TOLERANCE, atol=TOLERANCE), name
    assert np.array_equal(np.concatenate([first.visits, second.visits]), single.visits)
    parts = np.concatenate([first.contributions, second.contributions])
    np.testing.assert_allclose(parts, single.contributions, rtol=1e-7, atol=1e-12)


def test_shards_cover_every_row_once_and_refuse_impossible_splits() -> None:
    bounds = [shard_bounds(10, k, 3) for k in range(3)]
    assert bounds == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(TrainingError, match="cannot be split across 4 workers"):
        shard_bounds(3, 0, 4)
    with pytest.raises(TrainingError, match=r"rank 3 must be an integer in 0\.\.2"):
        shard_bounds(10, 3, 3)
    with pytest.raises(TrainingError, match="tcp://host:port"):
        Rendezvous("127.0.0.1:9", 0, 2)
    assert DataShard(1, 3, 10, None).local(np.array([9, 0, 4, 3, 6])).tolist() == [1, 0]


def test_parts_split_money_exactly_and_keep_a_single_job_s_id() -> None:
    assert part_id("job-x", 1, 0, 1) == "job-x"
    assert part_id("job-x", 2, 0, 1) == "job-x.t2.1of1"
    assert part_id("job-x", 1, 1, 2) == "job-x.t1.2of2"
    parts = split_amount(1_000_001, 10, 3)
    assert sum(parts) == 1_000_001 and parts == [300_000, 300_000, 400_001]


def _offer(provider: str, price: int, capacity: int = 10_000, offer_id: str = "") -> Offer:
    return Offer(offer_id or f"offer-{provider}", provider, "k", "ar", "simulated", price, capacity, "open")


def test_choose_offers_takes_the_cheapest_providers_with_a_deterministic_tie_break() -> None:
    quote = Quote(rows=100, epochs=2, model_cost=5, payment=10_000, compute_budget=3_000)  # 1,000 units
    offers = [_offer("c", 2), _offer("b", 1), _offer("a", 2), _offer("b", 1, offer_id="offer-b2")]
    chosen = choose_offers(offers, quote, 2)
    assert [o.offer_id for o in chosen] == ["offer-b", "offer-a"]  # one offer per provider
    with pytest.raises(NoOfferFits, match="only 3 provider"):
        choose_offers(offers, quote, 4)
    with pytest.raises(NoOfferFits, match="raise the budget"):
        choose_offers([_offer("a", 5), _offer("b", 5)], quote, 2)
    with pytest.raises(NoOfferFits, match="capacity for a share of 500"):
        choose_offers([_offer("a", 1, capacity=400), _offer("b", 1)], quote, 2)


def test_a_request_submitted_as_parts_is_refused_a_second_time(memory_db) -> None:  # type: ignore[no-untyped-def]
    from databright.ledger import deposit
    from databright.training.jobs import refuse_resubmission
    from databright.training.parts import submit_attempt

    deposit(memory_db, "acme", 10_000, reference="wire-1")
    attempt = submit_attempt(
        memory_db, job_id="job-x", number=1, offers=[_offer("a", 1), _offer("b", 1)], rows=10,
        period="2026-11", trainer_id="acme", dataset="demo", dataset_version=1, task="tabular_logreg",
        payment=1_000, budget=1_500,
    )  # fmt: skip
    assert [p.job_id for p in attempt.parts] == ["job-x.t1.1of2", "job-x.t1.2of2"]
    assert [(p.payment, p.budget, p.shard_rank, p.shard_count) for p in attempt.parts] == [
        (500, 750, 0, 2),
        (500, 750, 1, 2),
    ]
    with pytest.raises(TrainingError, match=r"already submitted as job-x \(job-x\.t1\.1of2 escrowed"):
        refuse_resubmission(memory_db, "job-x")
    refuse_resubmission(memory_db, "job-xy")  # another request whose id merely starts alike is free
