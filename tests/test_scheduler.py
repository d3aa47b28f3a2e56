"""The scheduler alone, with the fake engine: batching, the queue bound, deadlines, drain."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ranking.request import EncodedRequest
from server.metrics import ServerMetrics
from server.scheduler import DeadlineExceeded, Overloaded, Scheduler, ShuttingDown
from tests.fake_engine import FakeEngine, item_score


def request(n_items: int, item_tokens: int = 4, seed: int = 0) -> EncodedRequest:
    """A request whose computed tokens are 2 + n_items * item_tokens."""
    return EncodedRequest(
        [1, 2], [[seed * 100 + i * 10 + t for t in range(item_tokens)] for i in range(n_items)]
    )


def scores_of(r: EncodedRequest) -> np.ndarray:
    return np.array([item_score(ids) for ids in r.item_ids])


async def started(engine=None, **kw) -> Scheduler:
    args = dict(max_batch_tokens=10_000, max_wait_s=0.05, max_queue_items=100) | kw
    s = Scheduler(engine or FakeEngine(), ServerMetrics(), **args)
    s.start()
    return s


async def test_concurrent_requests_share_a_batch_and_get_their_own_scores():
    engine = FakeEngine()
    s = await started(engine)
    reqs = [request(n, seed=i) for i, n in enumerate((1, 3, 2, 5))]
    results = await asyncio.gather(*(s.submit(r, 5) for r in reqs))
    assert engine.batches == [[1, 3, 2, 5]]  # one batch, in arrival order
    for r, (scores, timing) in zip(reqs, results, strict=True):
        assert scores == pytest.approx(scores_of(r))
        assert timing["batch"] == 4 and timing["queue_s"] >= 0 and timing["prefill_s"] >= 0
    await s.drain()


async def test_batches_stop_at_max_batch_tokens():
    engine = FakeEngine()
    s = await started(engine, max_batch_tokens=25)  # each request below costs 2 + 2*4 = 10
    await asyncio.gather(*(s.submit(request(2, seed=i), 5) for i in range(5)))
    assert engine.batches == [[2, 2], [2, 2], [2]]
    await s.drain()


async def test_a_request_over_max_batch_tokens_runs_alone():
    engine = FakeEngine()
    s = await started(engine, max_batch_tokens=64)
    await asyncio.gather(s.submit(request(20), 5), s.submit(request(1), 5))
    assert engine.batches == [[20], [1]]
    await s.drain()


async def test_full_queue_refuses_at_once_and_frees_capacity_when_a_waiter_leaves():
    engine = FakeEngine()
    s = await started(engine, max_wait_s=0.3, max_queue_items=8)
    first = asyncio.create_task(s.submit(request(6), 5))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as exc:
        await s.submit(request(3), 5)
    assert exc.value.retry_after >= 1 and "limit 8" in str(exc.value)
    assert s.metrics.queued_items._value.get() == 6
    first.cancel()  # the client went away
    await asyncio.sleep(0.01)
    assert s.metrics.queued_items._value.get() == 0
    scores, _ = await s.submit(request(8), 5)  # the whole capacity is free again
    assert len(scores) == 8
    assert engine.batches == [[8]]  # the abandoned request was never computed
    await s.drain()


async def test_deadline_in_the_queue_is_504_and_never_computed():
    engine = FakeEngine()
    s = await started(engine, max_wait_s=0.3)
    with pytest.raises(DeadlineExceeded, match="0.05s deadline"):
        await s.submit(request(4), 0.05)
    assert s.metrics.queued_items._value.get() == 0
    await asyncio.sleep(0.4)  # past the batch window
    assert engine.batches == []
    await s.drain()


async def test_deadline_while_the_engine_runs():
    s = await started(FakeEngine(delay_s=0.3), max_wait_s=0)
    with pytest.raises(DeadlineExceeded):
        await s.submit(request(2), 0.1)
    await s.drain()


async def test_engine_error_reaches_every_request_of_the_batch():
    class Broken(FakeEngine):
        async def score(self, requests):
            raise RuntimeError("kernel exploded")

    s = await started(Broken())
    results = await asyncio.gather(
        s.submit(request(1), 5), s.submit(request(2), 5), return_exceptions=True
    )
    assert [str(r) for r in results] == ["kernel exploded"] * 2
    await s.drain()


async def test_drain_finishes_queued_work_and_refuses_new():
    engine = FakeEngine(delay_s=0.05)
    s = await started(engine, max_wait_s=0.1)
    queued = asyncio.create_task(s.submit(request(3), 5))
    await asyncio.sleep(0.01)
    draining = asyncio.create_task(s.drain())
    await asyncio.sleep(0.01)
    with pytest.raises(ShuttingDown):
        await s.submit(request(1), 5)
    scores, _ = await queued
    assert len(scores) == 3
    await draining
    assert engine.batches == [[3]]
