"""Admission control and dynamic batching in front of an engine.

- Admission by planned completion: a request is admitted only if its scores are expected within
  ``max_latency`` of its arrival at the server (``server.arrival``: reading, parsing and
  tokenizing count), at the measured service rate (computed tokens per second, a moving
  average over batches, so it includes what batching gains). The plan is the worker's own
  packing of the queue into batches: on a CPU a batch's time grows with its tokens and every
  request in it gets its scores when the whole batch ends, so a request may join the last
  planned batch only if that batch still ends in time for everyone in it; otherwise it starts
  the next batch (a barrier the worker keeps), or, if that too ends late, it is refused at once
  (``Overloaded`` -> HTTP 429 with Retry-After): overload costs the client a retry, not every
  admitted client a growing latency, and the admitted ones stay within the SLO. The plan is
  checked against what happens: each admitted request's lateness against its planned end is
  kept (the last ``MARGIN_WINDOW``), and their 95th percentile is added to every plan (the
  rate moves with load, batch times vary, other work shares the cores). An item count
  is the hard cap (alone until a rate is measured), and a request finding nothing queued is
  always admitted (progress).
- Batches: the worker takes queued requests in arrival order until the batch's computed tokens
  reach ``max_batch_tokens`` or a request admission placed in a new batch, waiting at most
  ``max_wait`` (default 0) for company after the first arrives.
- Deadlines and disconnects: a request whose deadline passed or whose client went away is
  dropped before its batch starts, so it stops costing compute.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ranking.request import EncodedRequest
from server.arrival import arrival
from server.engines.base import Engine
from server.metrics import VersionMetrics
from server.request_ids import current_exemplar

# admitted requests whose lateness against the plan sets the admission margin, and how many
# must have finished before it applies
MARGIN_WINDOW = 256
MARGIN_MIN_SAMPLES = 20
MARGIN_QUANTILE = 95


class Overloaded(Exception):
    def __init__(self, retry_after: float, message: str):
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass
class _Entry:
    request: EncodedRequest
    future: asyncio.Future
    enqueued: float
    deadline: float
    abandoned: bool = False
    started: float | None = field(default=None)
    exemplar: dict[str, str] | None = None  # the request's ids, for the latency histograms
    due: float = math.inf  # arrival + max_latency: when admission promised its scores
    planned_end: float | None = None  # when admission's plan had its batch end
    new_batch: bool = False  # admission placed it first in a batch: the worker starts one here


def quantile(values, q: float) -> float:
    """``np.percentile(values, 100 * q)`` (linear), in plain Python: on a window of 256 floats
    it costs ~2 us against numpy's ~40 (converting the deque and its many Python frames), and it
    runs after every batch."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        metrics: VersionMetrics,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue_items: int,
        max_latency_s: float = math.inf,
    ):
        self.engine = engine
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self.max_latency_s = max_latency_s
        self._queue: deque[_Entry] = deque()
        self._queued_items = 0
        self._queued_tokens = 0
        self._running_tokens = 0  # computed tokens of the batch on the engine now
        self._running_since = 0.0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._items_per_s = 100.0  # updated from measured batches; Retry-After of the item cap
        self.tokens_per_s: float | None = None  # measured service rate (None: no batch yet)
        self._lateness: deque[float] = deque(maxlen=MARGIN_WINDOW)  # s past planned_end
        self.margin_s = 0.0  # added to every plan (MARGIN_QUANTILE of the lateness)

    # ---- client side ------------------------------------------------------------------------
    async def submit(self, request: EncodedRequest, timeout_s: float) -> tuple[np.ndarray, dict]:
        """Scores one request; returns (scores, timings). Raises Overloaded / DeadlineExceeded."""
        if self._closing:
            raise ShuttingDown("server is shutting down")
        due = arrival() + self.max_latency_s
        new_batch, planned_end = self._admit(request, due)
        now = time.perf_counter()
        entry = _Entry(
            request,
            asyncio.get_running_loop().create_future(),
            now,
            now + timeout_s,
            exemplar=current_exemplar(),
            due=due,
            new_batch=new_batch,
            planned_end=planned_end,
        )
        self._queue.append(entry)
        self._queued_items += request.n_items
        self._queued_tokens += request.computed_tokens
        self._update_gauges()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), timeout=timeout_s)
        except TimeoutError:
            self._abandon(entry)
            raise DeadlineExceeded(
                f"request not finished within its {timeout_s:g}s deadline"
            ) from None
        except asyncio.CancelledError:  # client went away
            self._abandon(entry)
            raise

    def _last_batch(self) -> tuple[float, int, float, list[_Entry]]:
        """The queue as the worker will batch it (``_pop_batch``'s packing, at the measured
        rate): (seconds from now until the last planned batch starts, its tokens, the earliest
        ``due`` in it, its requests). (engine free, 0, inf, []) when nothing is queued."""
        rate = self.tokens_per_s
        start = 0.0
        if self._running_tokens:
            elapsed = time.perf_counter() - self._running_since
            start = max(0.0, self._running_tokens / rate - elapsed)
        tokens, due, members = 0, math.inf, []
        for e in self._queue:
            cost = e.request.computed_tokens
            if members and (e.new_batch or tokens + cost > self.max_batch_tokens):
                start += tokens / rate
                tokens, due, members = 0, math.inf, []
            if e.abandoned:
                continue
            tokens += cost
            due = min(due, e.due)
            members.append(e)
        return start, tokens, due, members

    def _placement(self, tokens: int, due: float) -> tuple[float, bool, list[_Entry]]:
        """Where admission would put a request of ``tokens`` computed tokens whose scores are due
        at ``due``: (seconds from now until its batch ends, the margin included; whether it
        starts a new batch; the requests already in the batch it joins). It joins the last
        planned batch when that batch, grown by it, still ends before every member's due time
        and its own; else it starts the next one."""
        start, last_tokens, last_due, members = self._last_batch()
        ends_in = start + self.margin_s + (last_tokens + tokens) / self.tokens_per_s
        if members and last_tokens + tokens <= self.max_batch_tokens:
            if time.perf_counter() + ends_in <= min(last_due, due):
                return ends_in, False, members
        return ends_in, bool(members), []

    def expected_latency_s(self, tokens: int = 0) -> float:
        """Seconds until a request of ``tokens`` computed tokens, queued now, has its scores, at
        the measured rate: the rest of the running batch, the planned batches ahead of it and
        its own (which ends when the whole batch does). 0 before any rate is measured."""
        if not self.tokens_per_s:
            return 0.0
        return self._placement(tokens, time.perf_counter() + self.max_latency_s)[0]

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch on the engine."""
        return not self._queue and self._idle.is_set()

    def _admit(self, request: EncodedRequest, due: float) -> tuple[bool, float | None]:
        """Raises ``Overloaded`` or returns (whether the request starts a new batch, when its
        batch is planned to end; None before a rate is measured)."""
        n = request.n_items
        if self._queued_items + n > self.max_queue_items:
            retry = max(1, math.ceil(self._queued_items / max(self._items_per_s, 1e-3)))
            raise Overloaded(
                retry,
                f"server overloaded: {self._queued_items} items queued, limit {self.max_queue_items}",
            )
        if not self.tokens_per_s:
            return False, None
        now = time.perf_counter()
        ends_in, new_batch, joined = self._placement(request.computed_tokens, due)
        planned_end = now + ends_in - self.margin_s
        if not self._queue:  # nothing waits ahead: always admitted, or a large one never would be
            return False, planned_end
        late = now + ends_in - due
        if late > 0:
            expected = self.max_latency_s + late
            raise Overloaded(
                max(1, math.ceil(late)),
                f"server overloaded: expected latency {expected * 1000:.0f} ms exceeds "
                f"max_expected_latency_ms={self.max_latency_s * 1000:g}",
            )
        for e in joined:  # their batch now ends later, by plan: not lateness
            e.planned_end = planned_end
        return new_batch, planned_end

    def _note_lateness(self, batch: list[_Entry], end: float) -> None:
        """Keeps how late each request's batch ended against admission's plan (early counts as
        0) and updates the margin from them."""
        for e in batch:
            if e.planned_end is not None:
                self._lateness.append(max(0.0, end - e.planned_end))
        if len(self._lateness) >= MARGIN_MIN_SAMPLES:
            self.margin_s = quantile(self._lateness, MARGIN_QUANTILE / 100)
            self.metrics.admission_margin.set(self.margin_s)

    def _abandon(self, entry: _Entry) -> None:
        """The waiter is gone: free its queue capacity now; the worker skips it when popped."""
        if not entry.abandoned and entry.started is None:
            self._queued_items -= entry.request.n_items
            self._queued_tokens -= entry.request.computed_tokens
            self._update_gauges()
        entry.abandoned = True

    # ---- worker -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    def stop_admitting(self) -> None:
        """New requests get ``ShuttingDown``; queued and running ones carry on."""
        self._closing = True

    def fail_all(self, exc: Exception) -> None:
        """Fails every queued request at once with ``exc`` (the engine is gone)."""
        while self._queue:
            e = self._queue.popleft()
            if not e.abandoned:
                self._queued_items -= e.request.n_items
                self._queued_tokens -= e.request.computed_tokens
                if not e.future.done():
                    e.future.set_exception(exc)
        self._update_gauges()

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Stops admitting, lets queued and running batches finish."""
        self._closing = True
        deadline = time.perf_counter() + timeout_s
        while (self._queue or not self._idle.is_set()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()

    def _update_gauges(self) -> None:
        self.metrics.queued_requests.set(len(self._queue))
        self.metrics.queued_items.set(self._queued_items)

    def _pop_batch(self) -> list[_Entry]:
        batch, tokens = [], 0
        while self._queue:
            e = self._queue[0]
            cost = e.request.computed_tokens
            if batch and (e.new_batch or tokens + cost > self.max_batch_tokens):
                break
            self._queue.popleft()
            if e.abandoned:
                continue  # deadline passed or client gone (capacity already freed): not computed
            self._queued_items -= e.request.n_items
            self._queued_tokens -= cost
            batch.append(e)
            tokens += cost
        self._update_gauges()
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                if not self._queue:
                    continue  # woken by fail_all
            # let concurrent requests join, up to max_wait after the oldest arrived
            first = self._queue[0].enqueued
            while (
                self._queued_tokens < self.max_batch_tokens
                and time.perf_counter() - first < self.max_wait_s
            ):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(
                        self._wakeup.wait(), self.max_wait_s - (time.perf_counter() - first)
                    )
                except TimeoutError:
                    break
            batch = self._pop_batch()
            if not batch:
                continue
            self._idle.clear()
            try:
                await self._execute(batch)
            finally:
                self._idle.set()

    async def _execute(self, batch: list[_Entry]) -> None:
        start = time.perf_counter()
        for e in batch:
            e.started = start
            self.metrics.queue_wait.observe(start - e.enqueued, exemplar=e.exemplar)
        tokens = sum(e.request.computed_tokens for e in batch)
        self._running_tokens, self._running_since = tokens, start
        try:
            results = await self.engine.score([e.request for e in batch])
        except Exception as exc:  # noqa: BLE001 - handed to this batch's requests only (-> 5xx)
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
            return
        finally:
            self._running_tokens = 0
        elapsed = time.perf_counter() - start
        for e, scores in zip(batch, results, strict=True):
            if not e.future.done():
                e.future.set_result(
                    (
                        scores,
                        {"queue_s": start - e.enqueued, "prefill_s": elapsed, "batch": len(batch)},
                    )
                )
        # The waiters answer their clients first; the bookkeeping is off their path.
        await asyncio.sleep(0)
        items = sum(e.request.n_items for e in batch)
        m = self.metrics
        m.batch_prefill.observe(elapsed)
        m.batch_items.observe(items)
        m.batch_requests.observe(len(batch))
        if elapsed > 0:
            self._items_per_s = 0.8 * self._items_per_s + 0.2 * (items / elapsed)
            rate = tokens / elapsed
            self.tokens_per_s = (
                rate if self.tokens_per_s is None else (0.8 * self.tokens_per_s + 0.2 * rate)
            )
        self._note_lateness(batch, start + elapsed)
        for e in batch:
            m.request_prefill.observe(elapsed, exemplar=e.exemplar)
            m.items.inc(e.request.n_items)
            m.prompt_tokens.inc(e.request.prompt_tokens)
            m.computed_tokens.inc(e.request.computed_tokens)
            m.reused_tokens.inc(e.request.prompt_tokens - e.request.computed_tokens)
