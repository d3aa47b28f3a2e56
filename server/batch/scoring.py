"""Scores query groups with the server's engine, task, limits and calibrator.

What the server does to one request, done to a batch of groups: the query tokenized with the
checkpoint's template once per group, each item checked against the same limits (a row over a
limit gets an error instead of a score, named as the server's 422 names it), the groups sent to
the engine in batches of ``max_batch_tokens`` prompt tokens (the server scheduler's budget),
and the raw scores calibrated by the checkpoint's calibrator.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from ranking.request import EncodedRequest
from ranking.score_calibration import Calibrator, load_calibrator
from server.batch.source import Group
from server.engines import Engine, LoadedModel, create_engine
from server.settings import ServerSettings

# engine batches submitted at once: the next is queued while one runs (the torch engine runs
# them one after another; vLLM's scheduler takes them together), so the engine does not wait on
# this loop between batches
IN_FLIGHT = 3


@dataclass
class Scored:
    """One group's outcome, per row: the raw and served score (NaN where the row failed) and
    the error (None where it was scored)."""

    group: Group
    raw: np.ndarray
    score: np.ndarray
    errors: list[str | None]


class BatchScorer:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.spec = settings.model_spec()
        # refused here, before any weight loads, if fitted for other weights
        self.calibrator: Calibrator | None = load_calibrator(self.spec.path)
        self.engine: Engine = create_engine(self.spec)
        self.model: LoadedModel | None = None

    async def start(self) -> LoadedModel:
        self.model = await self.engine.start()
        await self.engine.warmup(self.model)
        return self.model

    async def stop(self) -> None:
        await self.engine.stop()

    def encode(self, g: Group) -> tuple[EncodedRequest | None, list[str | None]]:
        """The group's request (its rows within the limits) and each row's error."""
        m, s = self.model, self.settings
        n = len(g.rows)
        instruction = g.rows[0].get("instruction")
        if instruction is not None and not getattr(m.task, "has_instruction", False):
            return None, ["instruction: this model's prompt template has no {instruction} "
                          "placeholder"] * n  # fmt: skip
        q_ids = m.task.encode_query(m.tokenizer, g.rows[0]["query"], instruction)
        if len(q_ids) > s.max_query_tokens:
            err = (
                f"query is {len(q_ids)} tokens; the limit is max_query_tokens={s.max_query_tokens}"
            )
            return None, [err] * n
        i_ids = m.task.encode_items(m.tokenizer, [r["item"] for r in g.rows])
        errors: list[str | None] = [
            f"item is {len(ids)} tokens with the question; the limit is "
            f"max_item_tokens={s.max_item_tokens}"
            if len(ids) > s.max_item_tokens
            else None
            for ids in i_ids
        ]
        kept = [ids for ids, e in zip(i_ids, errors, strict=True) if e is None]
        return (EncodedRequest(q_ids, kept) if kept else None), errors

    async def score(self, groups: list[Group]) -> list[Scored]:
        """Every group's scores, the groups batched to the engine by prompt tokens."""
        encoded = [self.encode(g) for g in groups]
        todo = [(i, enc) for i, (enc, _) in enumerate(encoded) if enc is not None]
        raw_by_group: dict[int, np.ndarray] = {}
        budget = self.settings.max_batch_tokens
        batches, start = [], 0
        while start < len(todo):
            end, tokens = start, 0
            while end < len(todo) and (
                end == start or tokens + todo[end][1].prompt_tokens <= budget
            ):
                tokens += todo[end][1].prompt_tokens
                end += 1
            batches.append(todo[start:end])
            start = end
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def run(batch: list) -> None:
            async with gate:
                results = await self.engine.score([enc for _, enc in batch])
            for (i, _), r in zip(batch, results, strict=True):
                raw_by_group[i] = np.asarray(r, dtype=np.float64)

        await asyncio.gather(*(run(b) for b in batches))
        out = []
        for i, (g, (_, errors)) in enumerate(zip(groups, encoded, strict=True)):
            raw = np.full(len(g.rows), np.nan)
            ok = np.array([e is None for e in errors])
            if ok.any():
                raw[ok] = raw_by_group[i]
            score = raw.copy()
            if self.calibrator is not None and ok.any():
                score[ok] = self.calibrator.apply(raw[ok])
            out.append(Scored(g, raw, score, errors))
        return out
