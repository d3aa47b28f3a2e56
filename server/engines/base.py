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
from ranking.task import WARMUP_ITEM, WARMUP_QUERY


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
        self.vocab_size: int | None = None  # rows of the LM head: valid token ids are below it
        # whether a request may ask for other label ids than the task's (``EncodedRequest``)
        self.any_label_ids = True

    @property
    def model_name(self) -> str:
        return self.settings.served_model_name or Path(self.settings.model).resolve().name

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; raise ``EngineUnavailable`` or ``CheckpointError`` with a clear message."""

    @abc.abstractmethod
    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        """Per request of the batch: P(yes)/(P(yes)+P(no)) per item, shape (n_items,); for a
        request that carries ``label_ids``, shape (n_items, len(label_ids)): the probability of
        each label id, normalised over those ids, or over the whole vocabulary where the
        request says ``full_vocab``."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    def is_alive(self) -> bool:
        """False once the engine can no longer score (a dead worker process): /health and
        /ready turn 503 so that an orchestrator restarts the server."""
        return True

    async def warmup(self) -> None:
        """One real request through the whole path (first-call costs: allocation, kernels)."""
        q = self.task.encode_query(self.tokenizer, WARMUP_QUERY)
        items = self.task.encode_items(self.tokenizer, [WARMUP_ITEM] * 4)
        await self.score([EncodedRequest(q, items)])
