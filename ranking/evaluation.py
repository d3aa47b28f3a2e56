"""Score a benchmark split with one scorer and compute the quality metrics.

Every stage of the pipeline (teacher, distilled, pruned, quantized) is evaluated by this one
function, on the same split, so numbers are comparable.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ranking.dataset import QueryGroup, to_batch
from ranking.metrics import expected_auc, log_loss, mean_ndcg_at_k, roc_auc


def score_groups(
    scorer, groups: list[QueryGroup], batch_queries: int = 32, progress: bool = False
) -> np.ndarray:
    """Flat scores for all items of ``groups`` in order, batched a few queries at a time."""
    out = []
    steps = range(0, len(groups), batch_queries)
    for s in tqdm(steps, desc="scoring", disable=not progress, unit="batch"):
        out.append(scorer.score_batch(to_batch(groups[s : s + batch_queries])))
    return np.concatenate(out) if out else np.zeros(0)


def quality_metrics(groups: list[QueryGroup], scores: np.ndarray) -> dict:
    labels = np.concatenate([g.labels for g in groups])
    probs = np.concatenate([g.probs for g in groups])
    qid = np.concatenate([np.full(len(g.labels), i) for i, g in enumerate(groups)])
    metrics = {
        "n": int(len(labels)),
        "queries": len(groups),
        "auc": roc_auc(labels, scores),
        "logloss": log_loss(labels, scores),
        "ndcg@10": mean_ndcg_at_k(qid, labels, scores, k=10),
    }
    if not np.isnan(probs).any():
        metrics["bayes_auc"] = expected_auc(probs, probs)
        # AUC against the true probabilities in expectation: less noisy than sampled labels
        metrics["expected_auc"] = expected_auc(probs, scores)
    return metrics


def evaluate(
    scorer, groups: list[QueryGroup], batch_queries: int = 32, progress: bool = False
) -> dict:
    return quality_metrics(groups, score_groups(scorer, groups, batch_queries, progress))
