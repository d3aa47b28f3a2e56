"""Bootstrap confidence intervals for AUC, resampling queries.

Rows of one query are not independent (one user, one moment, one history), so resampling rows
would understate the noise. Each replicate draws queries with replacement and weighs every
row by how often its query was drawn; the AUC of a weighted sample is computed exactly (ties
count half, as ``ranking.metrics.roc_auc``) from one sort shared by all replicates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ranking.metrics import roc_auc

MAX_CELLS = 20_000_000  # replicate x row weights held at once


def _weighted_aucs(y: np.ndarray, group_end: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC per row of the weight matrix ``w`` (replicates x rows, rows sorted by score);
    ``group_end``: the index after each run of tied scores."""
    pos = np.cumsum(w * y, axis=1)[:, group_end - 1]
    neg = np.cumsum(w * (1 - y), axis=1)[:, group_end - 1]
    pos_g = np.diff(pos, axis=1, prepend=0.0)
    neg_g = np.diff(neg, axis=1, prepend=0.0)
    neg_below = neg - neg_g
    num = (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1)
    den = pos[:, -1] * neg[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def bootstrap_auc(
    labels: Sequence[float],
    scores: Sequence[float],
    query_ids: Sequence,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(AUC, low, high): the AUC of the data and the percentile interval at ``level`` over
    ``n`` replicates that resample queries with replacement."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not (len(y) == len(s) == len(query_ids)):
        raise ValueError(f"labels ({len(y)}), scores ({len(s)}) and query_ids "
                         f"({len(query_ids)}) differ in length")  # fmt: skip
    auc = roc_auc(y, s)  # also checks 0/1 labels and both classes present
    _, q = np.unique(np.asarray(query_ids, dtype=object).astype(str), return_inverse=True)
    n_queries = int(q.max()) + 1
    order = np.argsort(s, kind="mergesort")
    y, s, q = y[order], s[order], q[order]
    group_end = np.append(np.flatnonzero(np.diff(s)) + 1, len(s))
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_CELLS // len(y))
    aucs = []
    for start in range(0, n, chunk):
        counts = rng.multinomial(n_queries, np.full(n_queries, 1.0 / n_queries),
                                 size=min(chunk, n - start))  # fmt: skip
        aucs.append(_weighted_aucs(y, group_end, counts[:, q].astype(np.float64)))
    values = np.concatenate(aucs)
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(values, [alpha, 1 - alpha])
    return auc, float(lo), float(hi)
