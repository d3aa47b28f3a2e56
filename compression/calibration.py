"""Calibration prompts: full ranking prompts drawn from data rows, which the pruner and the
quantizer measure a model's activations on."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importable without torch or transformers
    from ranking.task import RankingTask


def task_prompts(
    rows: list[dict], tokenizer, task: RankingTask, n: int, seed: int = 0
) -> list[list[int]]:
    """``n`` full ranking prompts drawn from benchmark rows (the calibration set)."""
    rng = random.Random(seed)
    picked = rng.sample(rows, min(n, len(rows)))
    return [
        task.encode_query(tokenizer, r["query"]) + task.encode_item(tokenizer, r["item"])
        for r in picked
    ]
