"""Fault injection for chaos runs and tests: a wrapper engine whose chosen batches raise.

It lives beside the engines and is chosen where engines are made (``create_engine``), so the
scheduler and the service carry no test switch: they see an engine whose batch failed, as they
would see a real one fail.
"""

from __future__ import annotations

import numpy as np

from ranking.request import EncodedRequest
from server.engines.base import Engine, LoadedModel


class EngineFault(RuntimeError):
    """An injected batch failure."""


class FaultyEngine(Engine):
    """Scores with ``inner``, except that the batches numbered in ``fail_batches`` (1 = the
    first after warm-up) raise ``EngineFault`` instead."""

    def __init__(self, inner: Engine, fail_batches: tuple[int, ...]):
        super().__init__(inner.spec)
        self.inner, self.fail_batches = inner, frozenset(fail_batches)
        self.name = inner.name
        self.batches = 0

    async def start(self) -> LoadedModel:
        return await self.inner.start()

    async def warmup(self, model: LoadedModel) -> None:
        await self.inner.warmup(model)  # the inner engine's own batches: not counted

    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        self.batches += 1
        if self.batches in self.fail_batches:
            raise EngineFault(f"injected fault in batch {self.batches} (fault_batches)")
        return await self.inner.score(requests)

    def is_alive(self) -> bool:
        return self.inner.is_alive()

    async def stop(self) -> None:
        await self.inner.stop()
