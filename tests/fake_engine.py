"""A fake scoring engine for in-process tests of the service and the scheduler: no model, no
torch; one token per word, scores that follow from the item's tokens, a configurable delay per
batch, and a record of every batch it ran."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from ranking.checkpoint import CheckpointInfo
from ranking.request import EncodedRequest
from server.engines import Engine
from server.settings import ServerSettings

YES_ID, NO_ID = 101, 102
QUESTION_ID = 7  # every item ends with it, as the real task appends its question


def token_id(word: str) -> int:
    return sum(map(ord, word)) % 1000 + 200


class WordTask:
    """The tokenizing part of ``ranking.task.RankingTask``: one token per word."""

    yes, no = " yes", " no"

    def encode_query(self, tokenizer, query: str) -> list[int]:
        return [token_id(w) for w in query.split()]

    def encode_items(self, tokenizer, items: list[str]) -> list[list[int]]:
        return [[token_id(w) for w in item.split()] + [QUESTION_ID] for item in items]


def item_score(ids: list[int]) -> float:
    """Deterministic, in (0, 1), different for most items."""
    return (sum(ids) % 89 + 1) / 91


def expected_scores(items: list[str]) -> np.ndarray:
    return np.array([item_score(ids) for ids in WordTask().encode_items(None, items)])


class FakeEngine(Engine):
    """``delay_s``: the time each batch takes; ``start_gate``: start() waits for it (a model
    still loading); ``fail_start``: start() raises it (a model that cannot load)."""

    name = "fake"

    def __init__(
        self,
        settings: ServerSettings | None = None,
        delay_s: float = 0.0,
        start_gate: asyncio.Event | None = None,
        fail_start: Exception | None = None,
    ):
        super().__init__(settings or ServerSettings(model="fake", served_model_name="fake"))
        self.delay_s, self.start_gate, self.fail_start = delay_s, start_gate, fail_start
        self.batches: list[list[int]] = []  # per batch: the item count of each request
        self.running = 0  # batches being scored now
        self.stopped = False

    async def start(self) -> None:
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.fail_start is not None:
            raise self.fail_start
        self.task, self.tokenizer = WordTask(), None
        self.label_ids = (YES_ID, NO_ID)
        self.info = CheckpointInfo(Path("fake"), "bf16", "FakeForCausalLM", 1234)

    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        self.batches.append([r.n_items for r in requests])
        self.running += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
        return [np.array([item_score(ids) for ids in r.item_ids]) for r in requests]

    async def stop(self) -> None:
        self.stopped = True
