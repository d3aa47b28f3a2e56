"""Ranking quality metrics: ROC AUC (ties count half), log loss, NDCG@k, and calibration:
expected calibration error, the Brier score and the reliability bins.

Plain numpy so that training, evaluation, reports and the server share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values get the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # boundaries of runs of equal values
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(xs)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def roc_auc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2).

    Mann-Whitney U with average ranks, so it is exact with ties.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def expected_auc(probs: Sequence[float], scores: Sequence[float]) -> float:
    """AUC in expectation over labels ~ Bernoulli(probs), ties counting 1/2.

    With scores = probs this is the Bayes-optimal AUC: no scorer can beat ranking by the true
    probability. Exact O(n log n): sum over ordered pairs of p_i (1 - p_j) [s_i > s_j].
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(s, kind="mergesort")
    p, s = p[order], s[order]
    q = 1.0 - p
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    num = 0.0
    neg_below = 0.0  # sum of (1-p) over strictly lower scores
    for st, en in zip(starts, ends, strict=True):
        pg, qg = p[st:en], q[st:en]
        # strictly-lower negatives, plus half the within-group pairs (i != j)
        num += pg.sum() * neg_below + 0.5 * (pg.sum() * qg.sum() - float(pg @ qg))
        neg_below += qg.sum()
    pos = p.sum()
    den = pos * q.sum() - float(p @ q)  # expected number of (pos, neg) pairs, i != j
    return float(num / den)


def log_loss(labels: Sequence[float], probs: Sequence[float], eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (natural log); probabilities are clipped to [eps, 1-eps]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


CALIBRATION_BINS = 15


def _pair(labels: Sequence[float], probs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape")
    if not len(y):
        raise ValueError("no pairs")
    return y, p


def reliability_bins(
    labels: Sequence[float], probs: Sequence[float], bins: int = CALIBRATION_BINS
) -> dict[str, list]:
    """Per equal-width bin of the predicted probability over [0, 1] (bin i holds
    [i/bins, (i+1)/bins), the last one also 1.0): the mean prediction ("confidence"), the
    share of positives ("accuracy") and the pair count; empty bins hold NaN and 0."""
    y, p = _pair(labels, probs)
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=bins) / count
        acc = np.bincount(idx, weights=y, minlength=bins) / count
    return {"confidence": conf.tolist(), "accuracy": acc.tolist(), "count": count.tolist()}


def expected_calibration_error(
    labels: Sequence[float], probs: Sequence[float], bins: int = CALIBRATION_BINS
) -> float:
    """ECE as torchmetrics' binary calibration error computes it (L1 norm, equal-width bins):
    sum over bins of |share of positives - mean prediction| weighted by the bin's share of
    pairs. 0 for a model whose 0.3 is engaged with 30% of the time. ``labels`` may also be
    true probabilities: the ECE against them, free of label noise."""
    b = reliability_bins(labels, probs, bins)
    count = np.asarray(b["count"], dtype=np.float64)
    gap = np.abs(np.asarray(b["accuracy"]) - np.asarray(b["confidence"]))
    return float(np.sum(np.where(count > 0, gap * count, 0.0)) / count.sum())


def brier_score(labels: Sequence[float], probs: Sequence[float]) -> float:
    """Mean squared difference between the predicted probability and the 0/1 outcome."""
    y, p = _pair(labels, probs)
    return float(np.mean((p - y) ** 2))


def ndcg_at_k(relevance: Sequence[float], scores: Sequence[float], k: int = 10) -> float:
    """NDCG@k for one list: gains 2^rel - 1, discount log2(rank + 1); 0 if the list has no gain.

    Ties in scores are broken by original order (stable sort), as a served ranking would be.
    """
    rel = np.asarray(relevance, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    k = min(k, len(rel))
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    gains = 2.0**rel - 1.0
    dcg = float(gains[np.argsort(-s, kind="stable")[:k]] @ disc)
    idcg = float(np.sort(gains)[::-1][:k] @ disc)
    return dcg / idcg if idcg > 0 else 0.0


def mean_ndcg_at_k(
    groups: Sequence[int], relevance: Sequence[float], scores: Sequence[float], k: int = 10
) -> float:
    """NDCG@k averaged over queries (rows grouped by ``groups``), skipping lists without gain."""
    g = np.asarray(groups)
    rel = np.asarray(relevance, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    values = []
    for gid in np.unique(g):
        m = g == gid
        if rel[m].max() > 0:
            values.append(ndcg_at_k(rel[m], s[m], k))
    return float(np.mean(values)) if values else 0.0
