"""The tokenized ranking request: one query and its items as token ids.

One type for every consumer: the server's engines score it, the training loop learns from it
(with ``labels``), evaluation scores and measures it (``labels`` and ``probs``), load-test
baselines replay it. The ids are the pieces ``ranking.task.RankingTask`` builds: the query
prefix once, each item's suffix separately, so the query is computed once per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class EncodedRequest:
    query_ids: list[int]
    item_ids: list[list[int]]
    labels: np.ndarray | None = None  # per item, 0/1, where the request comes from a split
    probs: np.ndarray | None = None  # per item, true probability where the data knows it, or NaN
    query_id: str | None = None
    # the label token ids to answer with (None: the task's yes/no, scored as P(yes)/(P(yes)+P(no)))
    # and whether their probabilities are over the whole vocabulary (else over these ids only)
    label_ids: tuple[int, ...] | None = None
    full_vocab: bool = False

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def prompt_tokens(self) -> int:
        """Tokens in the prompts as a naive scorer sees them (the query repeated per item)."""
        return len(self.query_ids) * self.n_items + sum(len(i) for i in self.item_ids)

    @property
    def computed_tokens(self) -> int:
        """Tokens run through the model when the items share the query's prefix."""
        return len(self.query_ids) + sum(len(i) for i in self.item_ids)
