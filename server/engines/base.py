"""The engine interface: load a checkpoint, warm up, score batches of tokenized requests.

Tokenization and the ranking contract (prompt layout, label tokens) are shared: every engine
scores exactly the prompts ``ranking.task.RankingTask`` builds.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from ranking.checkpoint import CheckpointInfo
from ranking.request import EncodedRequest


class EngineUnavailable(RuntimeError):
    """The engine cannot run this checkpoint on this hardware; the message names the way out."""


class Engine(abc.ABC):
    """Lifecycle: ``start()`` (load + warm-up, may take a while) -> ``score()`` ... -> ``stop()``."""

    name: str = "?"

    def __init__(self, settings):
        self.settings = settings
        self.tokenizer = None
        self.task = None
        self.info: CheckpointInfo | None = None
        self.label_ids: tuple[int, int] | None = None

    @property
    def model_name(self) -> str:
        return self.settings.served_model_name or Path(self.settings.model).resolve().name

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; raise ``EngineUnavailable`` or ``CheckpointError`` with a clear message."""

    @abc.abstractmethod
    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        """P(yes)/(P(yes)+P(no)) for every item of every request (one engine batch)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    def is_alive(self) -> bool:
        """False once the engine can no longer score (a dead worker process): /health and
        /ready turn 503 so that an orchestrator restarts the server."""
        return True

    async def warmup(self) -> None:
        """One real request through the whole path (first-call costs: allocation, kernels)."""
        q = self.task.encode_query(self.tokenizer, "member profile: warm-up.")
        items = self.task.encode_items(self.tokenizer, ["item: warm-up."] * 4)
        await self.score([EncodedRequest(q, items)])
