"""Rows of a data folder -> per-query groups -> tokenized requests.

Splits are read only through the data contract (``ranking.datafolder``: JSONL or Parquet,
validated row by row); this module turns its rows into the units training, evaluation and
the serving check work on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ranking.datafolder import first_queries
from ranking.request import EncodedRequest
from ranking.task import RankingTask


def group_by_query(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows grouped per query, in first-seen order (items of one query share its prefix)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["query_id"], []).append(r)
    return list(groups.items())


def requests_from_split(data_dir: str | Path, split: str, n: int) -> list[tuple[str, list[str]]]:
    """The first ``n`` queries of a split as text requests: (query, items)."""
    return [
        (rows[0]["query"], [r["item"] for r in rows])
        for _, rows in group_by_query(first_queries(data_dir, split, n))
    ]


def labels_in_group_order(rows: list[dict]) -> np.ndarray:
    """The rows' labels in the order ``encode_groups`` (and so evaluation) lays items out."""
    return np.array([r["label"] for _, grp in group_by_query(rows) for r in grp], dtype=np.float64)


def probs_in_group_order(rows: list[dict]) -> np.ndarray:
    """The rows' true probabilities (NaN where the data has none), in the same order."""
    return np.array(
        [r.get("p", np.nan) for _, grp in group_by_query(rows) for r in grp], dtype=np.float64
    )


def encode_groups(rows: list[dict], tokenizer, task: RankingTask) -> list[EncodedRequest]:
    """One tokenized request per query, with its labels and true probabilities (NaN where the
    data has none): the unit both training and evaluation batch on."""
    return [
        EncodedRequest(
            query_ids=task.encode_query(tokenizer, grp[0]["query"]),
            item_ids=task.encode_items(tokenizer, [r["item"] for r in grp]),
            labels=np.array([r["label"] for r in grp], dtype=np.float32),
            probs=np.array([r.get("p", np.nan) for r in grp], dtype=np.float64),
            query_id=query_id,
        )
        for query_id, grp in group_by_query(rows)
    ]
