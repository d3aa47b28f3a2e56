"""A fake scoring engine for in-process tests of the service and the scheduler: no model, no
torch; one token per word, scores that follow from the item's tokens, a configurable delay per
batch, and a record of every batch it ran."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from ranking.checkpoint import CheckpointInfo
from ranking.request import EncodedRequest
from server.engines import Engine, LoadedModel, ModelSpec

YES_ID, NO_ID = 101, 102
QUESTION_ID = 7  # every item ends with it, as the real task appends its question
VOCAB = 1200  # token ids 0..1199
OTHER_MASS = 0.1  # full-vocabulary probability not on the two labels, spread evenly


def token_id(word: str) -> int:
    return sum(map(ord, word)) % 1000 + 200


class WordTokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [token_id(w) for w in text.split()]


class WordTask:
    """The tokenizing part of ``ranking.task.RankingTask``: one token per word; an instruction
    (where ``has_instruction``) is prepended to the query."""

    yes, no = " yes", " no"

    def __init__(self, has_instruction: bool = False):
        self.has_instruction = has_instruction

    def encode_query(self, tokenizer, query: str, instruction: str | None = None) -> list[int]:
        return [token_id(w) for w in f"{instruction or ''} {query}".split()]

    def encode_items(self, tokenizer, items: list[str]) -> list[list[int]]:
        return [[token_id(w) for w in item.split()] + [QUESTION_ID] for item in items]


def item_score(ids: list[int]) -> float:
    """Deterministic, in (0, 1), different for most items."""
    return (sum(ids) % 89 + 1) / 91


def expected_scores(items: list[str]) -> np.ndarray:
    return np.array([item_score(ids) for ids in WordTask().encode_items(None, items)])


def vocab_probability(ids: list[int], token: int) -> float:
    """The fake model's probability of ``token`` over the whole vocabulary after ``ids``."""
    s = item_score(ids)
    if token == YES_ID:
        return (1 - OTHER_MASS) * s
    if token == NO_ID:
        return (1 - OTHER_MASS) * (1 - s)
    return OTHER_MASS / (VOCAB - 2)


def label_scores(ids: list[int], label_ids, full_vocab: bool) -> np.ndarray:
    p = np.array([vocab_probability(ids, t) for t in label_ids])
    return p if full_vocab else p / p.sum()


class FakeEngine(Engine):
    """``delay_s``: the time each batch takes; ``start_gate``: start() waits for it (a model
    still loading); ``fail_start``: start() raises it (a model that cannot load)."""

    name = "fake"

    def __init__(
        self,
        spec: ModelSpec | None = None,
        delay_s: float = 0.0,
        start_gate: asyncio.Event | None = None,
        fail_start: Exception | None = None,
        has_instruction: bool = False,
    ):
        super().__init__(spec or ModelSpec(path="fake", name="fake"))
        self.delay_s, self.start_gate, self.fail_start = delay_s, start_gate, fail_start
        self.batches: list[list[int]] = []  # per batch: the item count of each request
        self.running = 0  # batches being scored now
        self.stopped = False
        self.has_instruction = has_instruction
        self.requests: list[EncodedRequest] = []  # every request scored, in order

    async def start(self) -> LoadedModel:
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.fail_start is not None:
            raise self.fail_start
        return LoadedModel(
            info=CheckpointInfo(Path("fake"), "bf16", "FakeForCausalLM", 1234),
            tokenizer=WordTokenizer(),
            task=WordTask(self.has_instruction),
            label_ids=(YES_ID, NO_ID),
            vocab_size=VOCAB,
            kernel="fake",
            kernel_reason="a test double",
        )

    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        self.batches.append([r.n_items for r in requests])
        self.running += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
        self.requests.extend(requests)
        return [
            np.array([item_score(ids) for ids in r.item_ids])
            if r.label_ids is None
            else np.array([label_scores(ids, r.label_ids, r.full_vocab) for ids in r.item_ids])
            for r in requests
        ]

    async def stop(self) -> None:
        self.stopped = True
