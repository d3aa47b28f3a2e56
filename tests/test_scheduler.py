"""The scheduler alone, with the fake engine: batching, the queue bound, deadlines, drain."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ranking.request import EncodedRequest
from server.arrival import arrival, reset_arrival, set_arrival
from server.engines.faults import FaultyEngine
from server.metrics import ServerMetrics
from server.scheduler import (
    DeadlineExceeded,
    Overloaded,
    Scheduler,
    ShuttingDown,
    _Entry,
    quantile,
)
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
    s = Scheduler(engine or FakeEngine(), ServerMetrics().for_version("m", "1"), **args)
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


# ---- admission by expected latency -------------------------------------------------------------------
async def test_admission_by_item_cap_alone_until_a_rate_is_measured():
    s = await started(FakeEngine(delay_s=0.2), max_wait_s=0.0, max_latency_s=0.001)
    assert s.tokens_per_s is None and s.expected_latency_s() == 0.0
    first = asyncio.create_task(s.submit(request(2), 5))
    await asyncio.sleep(0.01)  # the first is on the engine, nothing is queued
    waiters = [asyncio.create_task(s.submit(request(2), 5)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert all(not w.done() for w in waiters)  # no rate yet: only the item cap applies
    await asyncio.gather(first, *waiters)
    assert s.tokens_per_s is not None and s.tokens_per_s > 0
    await s.drain()


async def test_admission_refuses_when_the_expected_latency_exceeds_the_budget():
    engine = FakeEngine(delay_s=0.1)
    # batches of one request each: every request queued ahead delays the next one
    s = await started(engine, max_wait_s=0.0, max_latency_s=0.35, max_batch_tokens=42)
    await s.submit(request(10), 5)  # measures the rate: 42 tokens in ~0.1 s
    rate = s.tokens_per_s
    assert rate == pytest.approx(42 / 0.1, rel=0.5)
    running = asyncio.create_task(s.submit(request(10), 5))
    await asyncio.sleep(0.01)
    queued = [asyncio.create_task(s.submit(request(10), 5))]  # nothing queued: always admitted
    await asyncio.sleep(0.01)
    admitted, refused = 0, None
    for _ in range(10):
        try:
            queued.append(asyncio.create_task(s.submit(request(10), 5)))
            await asyncio.sleep(0)
            if queued[-1].done() and queued[-1].exception() is not None:
                raise queued[-1].exception()
            admitted += 1
        except Overloaded as exc:
            refused = exc
            queued.pop()
            break
    assert refused is not None, "the budget never refused"
    assert "expected latency" in str(refused) and "max_expected_latency_ms=350" in str(refused)
    assert refused.retry_after >= 1
    # the last admitted request was expected within the budget; the refused one not
    assert s.expected_latency_s(42) > 0.35 and admitted >= 1
    assert s.expected_latency_s() <= 0.35 + 42 / rate
    await asyncio.gather(running, *queued)
    await s.drain()


def planned(max_batch_tokens: int = 100, max_latency_s: float = 1.0) -> Scheduler:
    """A scheduler whose worker is not running, at a measured rate of 100 tokens/s."""
    s = Scheduler(
        FakeEngine(),
        ServerMetrics().for_version("m", "1"),
        max_batch_tokens,
        0.0,
        100,
        max_latency_s=max_latency_s,
    )
    s.tokens_per_s = 100.0
    return s


def enqueue(s: Scheduler, tokens: int, due_in_s: float = 60.0, new_batch: bool = False):
    """A queued request of ``tokens`` computed tokens (one item), due ``due_in_s`` from now."""
    now = time.perf_counter()
    r = EncodedRequest([1] * (tokens - 1), [[7]])
    assert r.computed_tokens == tokens
    fut = asyncio.get_running_loop().create_future()
    s._queue.append(_Entry(r, fut, now, now + 60, due=now + due_in_s, new_batch=new_batch))
    s._queued_items += 1
    s._queued_tokens += tokens


async def test_expected_latency_counts_the_running_batch_the_planned_batches_and_its_own():
    s = planned()
    assert s.expected_latency_s(50) == pytest.approx(0.5, abs=0.01)  # nothing queued: its own
    enqueue(s, 50)
    # joins the queued 50: one batch of 100 tokens, whose end is when both get their scores
    assert s.expected_latency_s(50) == pytest.approx(1.0, abs=0.01)
    # 60 more do not fit the batch of 100: they wait for it, then run alone
    assert s.expected_latency_s(60) == pytest.approx(1.1, abs=0.01)
    enqueue(s, 100)  # a second planned batch
    assert s.expected_latency_s(50) == pytest.approx(2.0, abs=0.01)
    s._running_tokens, s._running_since = 100, time.perf_counter()
    assert s.expected_latency_s(50) == pytest.approx(3.0, abs=0.05)  # + the running batch


async def test_a_request_joins_a_batch_only_if_everyone_in_it_still_ends_in_time():
    s = planned()
    enqueue(s, 50, due_in_s=0.75)
    # joining would end the batch at 0.9 s, past the queued request's due time: a new batch
    ends_in, new_batch, _ = s._placement(40, time.perf_counter() + 5)
    assert new_batch and ends_in == pytest.approx(0.9, abs=0.01)
    # a smaller one joins: the batch, grown by it, still ends (0.7 s) before 0.75 s
    ends_in, new_batch, _ = s._placement(20, time.perf_counter() + 5)
    assert not new_batch and ends_in == pytest.approx(0.7, abs=0.01)


async def test_the_worker_starts_a_batch_where_admission_placed_one():
    s = planned()
    enqueue(s, 10)
    enqueue(s, 10, new_batch=True)
    enqueue(s, 10)
    assert [len(s._pop_batch()), len(s._pop_batch())] == [1, 2]
    # a barrier whose request went away still ends the batch before it: the plan holds
    enqueue(s, 10)
    enqueue(s, 10, new_batch=True)
    enqueue(s, 10)
    s._abandon(s._queue[1])
    assert s._last_batch()[1] == 10
    assert [len(s._pop_batch()), len(s._pop_batch())] == [1, 1]


async def test_admission_counts_the_time_since_the_request_reached_the_server():
    s = planned(max_latency_s=0.35)
    enqueue(s, 10)  # 0.1 s queued ahead, its own 0.1 s more: 0.2 s from now
    token = set_arrival(time.perf_counter() - 0.2)  # parsing and tokenizing took 0.2 s
    try:
        with pytest.raises(Overloaded, match="expected latency 4[0-9][0-9] ms"):
            s._admit(EncodedRequest([1] * 9, [[7]]), arrival() + s.max_latency_s)
    finally:
        reset_arrival(token)
    assert s._admit(EncodedRequest([1] * 9, [[7]]), arrival() + s.max_latency_s) is not None


async def test_admitted_requests_finish_within_the_budget_and_the_rest_are_refused_at_once():
    """A burst of 10 requests when 2 fit in the budget: the admitted ones all finish within
    it (plus scheduling slack), the others get 429 without waiting."""
    engine = FakeEngine(delay_s=0.2)
    s = await started(engine, max_wait_s=0.0, max_latency_s=0.5, max_batch_tokens=1000)
    await s.submit(request(10), 5)  # measures the rate: 42 tokens in ~0.2 s (~210 tokens/s)
    t0 = asyncio.get_running_loop().time()
    burst = [asyncio.create_task(s.submit(request(10), 5)) for _ in range(10)]
    results = await asyncio.gather(*burst, return_exceptions=True)
    done = asyncio.get_running_loop().time() - t0
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(admitted) + len(refused) == 10 and 1 <= len(admitted) <= 3, results
    assert done < 0.5 + 0.2  # the admitted finished about when expected
    await s.drain()


async def test_injected_fault_fails_only_its_batch():
    engine = FaultyEngine(FakeEngine(), (2,))
    s = await started(engine, max_wait_s=0.0)
    out = []
    for i in range(3):
        try:
            await s.submit(request(2, seed=i), 5)
            out.append("ok")
        except Exception as exc:  # noqa: BLE001
            out.append(type(exc).__name__)
    assert out == ["ok", "EngineFault", "ok"]
    await s.drain()


async def test_the_plan_adds_how_late_recent_batches_ended():
    """Admitted requests that finish later than planned (the rate moved, other work took the
    cores) raise the margin every plan adds: the 95th percentile of their lateness."""
    s = planned()
    assert s.margin_s == 0.0 and s.expected_latency_s(50) == pytest.approx(0.5, abs=0.01)
    end = time.perf_counter()
    batch = []
    for i in range(40):
        enqueue(s, 10)
        e = s._queue.pop()
        e.planned_end = end - 0.1 if i % 4 else end + 0.2  # 30 late by 0.1 s, 10 early
        batch.append(e)
    s._note_lateness(batch[:10], end)
    assert s.margin_s == 0.0  # too few finished yet
    s._note_lateness(batch[10:], end)
    assert s.margin_s == pytest.approx(0.1)
    assert s.metrics.admission_margin._value.get() == s.margin_s
    assert s.expected_latency_s(50) == pytest.approx(0.6, abs=0.01)


async def test_a_request_joining_a_batch_moves_its_planned_end():
    s = planned()
    s._admit(EncodedRequest([1] * 9, [[7]]), time.perf_counter() + 5)  # nothing queued
    enqueue(s, 50)
    first = s._queue[0]
    first.planned_end = time.perf_counter() + 0.5
    new_batch, planned_end = s._admit(EncodedRequest([1] * 49, [[7]]), time.perf_counter() + 5)
    assert not new_batch and first.planned_end == planned_end  # the batch of 100 ends at 1 s
    assert planned_end - time.perf_counter() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("n", [1, 2, 20, 256])
def test_margin_quantile_matches_numpy(n):
    """The admission margin's quantile is numpy's linear percentile, computed without numpy."""
    x = np.random.default_rng(n).exponential(0.01, n).tolist()
    for q in (0.0, 0.5, 0.95, 1.0):
        assert quantile(x, q) == pytest.approx(float(np.percentile(x, 100 * q)), abs=1e-15)
