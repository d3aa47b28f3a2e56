"""Benchmark splits on disk -> rows -> per-query groups -> tokenized requests.

A split is ``{split}.jsonl`` in a data folder, one row per (query, item) pair with at least
``query_id``, ``query``, ``item`` and ``label`` (``p``, the true probability, where known).
Training, evaluation, calibration, the serving check and load tests all read splits here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ranking.request import EncodedRequest
from ranking.task import RankingTask


def read_split(data_dir: str | Path, split: str) -> list[dict]:
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no {split} split at {path}")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


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
        for _, rows in group_by_query(read_split(data_dir, split))[:n]
    ]


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
