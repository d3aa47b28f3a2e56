"""Shadow scoring: a copy of a request for a shadow version, after the primary has answered.

The copy waits in a bounded queue, apart from live traffic; when the queue is full it is
dropped and counted, never made to wait. One worker takes copies in order and runs each only
when no live work is queued or running on any version (on a CPU the versions share the cores:
a shadow batch beside a live one slows the live one down), so shadow work fills idle time and,
when there is not enough of it, the queue fills and copies are dropped instead of live
requests slowed. The worker tokenizes a copy with the shadow's own task, submits it to the
shadow's scheduler (whose admission can refuse it, counted too), and records how far the shadow is from the primary per (primary, shadow)
pair: mean |score difference| over the items and the top-k overlap. The shadow's scores are
never returned to anyone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ranking.request import EncodedRequest
from server.metrics import ServerMetrics
from server.scheduler import Overloaded

log = logging.getLogger("slimrank.server")
DEFAULT_K = 10


def agreement(primary: np.ndarray, shadow: np.ndarray, k: int) -> tuple[float, float]:
    """(mean |shadow - primary|, share of the primary's top k in the shadow's top k)."""
    diff = float(np.mean(np.abs(shadow - primary)))
    k = max(1, min(k, len(primary)))
    top_p = set(np.argsort(-primary, kind="stable")[:k].tolist())
    top_s = set(np.argsort(-shadow, kind="stable")[:k].tolist())
    return diff, len(top_p & top_s) / k


@dataclass
class ShadowCopy:
    primary: object  # server.model_set.ModelVersion
    shadow: object
    encode: Callable[[object], EncodedRequest]  # tokenizes the request for a version
    primary_scores: np.ndarray
    k: int
    request_id: str  # the live request's, for the log


IDLE_POLL_S = 0.002


class ShadowMirror:
    """``idle``: whether every version's scheduler is idle (the model set's)."""

    def __init__(
        self, metrics: ServerMetrics, max_queued: int, timeout_s: float, idle: Callable[[], bool]
    ):
        self.metrics, self.timeout_s, self.idle = metrics, timeout_s, idle
        self._queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(maxsize=max_queued)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shadow")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        while not self._queue.empty():
            self._done(self._queue.get_nowait())

    def _count(self, c: ShadowCopy, outcome: str) -> None:
        self.metrics.shadow_requests.labels(
            c.primary.name, c.primary.version, c.shadow.version, outcome
        ).inc()

    def offer(self, c: ShadowCopy) -> bool:
        """Queues ``c`` if there is room (the shadow counts it as routed), else drops it."""
        try:
            self._queue.put_nowait(c)
        except asyncio.QueueFull:
            self._count(c, "dropped")
            return False
        c.shadow.active += 1
        return True

    def _done(self, c: ShadowCopy) -> None:
        c.shadow.active -= 1

    async def _run(self) -> None:
        while True:
            c = await self._queue.get()
            try:
                await self._score(c)
            finally:
                self._done(c)

    async def _score(self, c: ShadowCopy) -> None:
        while not self.idle():
            await asyncio.sleep(IDLE_POLL_S)
        if c.shadow.state != "ready":
            self._count(c, "failed")
            return
        try:
            enc = c.encode(c.shadow)
            scores, _ = await c.shadow.scheduler.submit(enc, self.timeout_s)
        except Overloaded:
            self._count(c, "refused")
            return
        except Exception as exc:  # noqa: BLE001 - a shadow failure never reaches a client
            log.warning(
                "shadow %s failed for request %s: %s",
                c.shadow.key,
                c.request_id,
                type(exc).__name__,
            )
            self._count(c, "failed")
            return
        served = c.shadow.calibrate(np.asarray(scores, dtype=np.float64))
        diff, overlap = agreement(c.primary_scores, served, c.k)
        pair = (c.primary.name, c.primary.version, c.shadow.version)
        self.metrics.shadow_score_diff.labels(*pair).observe(diff)
        self.metrics.shadow_topk_overlap.labels(*pair).observe(overlap)
        self._count(c, "scored")
        log.debug(
            "shadow %s of %s for request %s: mean |diff| %.4f, top-%d overlap %.2f",
            c.shadow.key,
            c.primary.key,
            c.request_id,
            diff,
            c.k,
            overlap,
        )
