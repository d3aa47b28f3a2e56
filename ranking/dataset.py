"""Benchmark rows -> tokenized per-query groups, the unit both training and evaluation batch on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranking.scorer import ScoreBatch
from ranking.synthetic import group_by_query
from ranking.task import RankingTask


@dataclass
class QueryGroup:
    query_ids: list[int]
    item_ids: list[list[int]]
    labels: np.ndarray
    probs: np.ndarray  # true probabilities where the data knows them (NaN otherwise)


def encode_groups(rows: list[dict], tokenizer, task: RankingTask) -> list[QueryGroup]:
    groups = []
    for _, grp in group_by_query(rows):
        groups.append(
            QueryGroup(
                query_ids=task.encode_query(tokenizer, grp[0]["query"]),
                item_ids=task.encode_items(tokenizer, [r["item"] for r in grp]),
                labels=np.array([r["label"] for r in grp], dtype=np.float32),
                probs=np.array([r.get("p", np.nan) for r in grp], dtype=np.float64),
            )
        )
    return groups


def to_batch(groups: list[QueryGroup]) -> ScoreBatch:
    return ScoreBatch.from_requests([(g.query_ids, g.item_ids) for g in groups])
