"""Score a benchmark split with one scorer and compute the quality metrics.

Every checkpoint (teacher, distilled, pruned, quantized) is evaluated by ``evaluate_checkpoint``
with the same scorer on the same split, so numbers are comparable; ``evaluate`` does the same
for a model in memory (validation during training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ranking.bootstrap import bootstrap_auc
from ranking.checkpoint import CheckpointInfo, load_checkpoint
from ranking.datafolder import head_rows, read_split
from ranking.dataset import encode_groups
from ranking.metrics import (
    brier_score,
    expected_auc,
    expected_calibration_error,
    log_loss,
    mean_ndcg_at_k,
    roc_auc,
)
from ranking.request import EncodedRequest
from ranking.score_calibration import load_calibrator
from ranking.scorer import TorchScorer

BOOTSTRAP = 1000  # replicates for a checkpoint's AUC interval


def score_groups(
    scorer, groups: list[EncodedRequest], batch_queries: int = 32, progress: bool = False
) -> np.ndarray:
    """Flat scores for all items of ``groups`` in order, batched a few queries at a time."""
    out = []
    steps = range(0, len(groups), batch_queries)
    for s in tqdm(steps, desc="scoring", disable=not progress, unit="batch"):
        out.append(scorer.score_batch(groups[s : s + batch_queries]))
    return np.concatenate(out) if out else np.zeros(0)


def quality_metrics(groups: list[EncodedRequest], scores: np.ndarray, bootstrap: int = 0) -> dict:
    """AUC, log loss, NDCG@10, ECE and Brier (and, where the data has true probabilities, the Bayes AUC in
    expectation and on the sampled labels, and the expected AUC). ``bootstrap`` > 0 adds
    ``auc_lo`` / ``auc_hi``: a 95% interval over that many replicates resampling queries
    (``ranking.bootstrap``), so a difference can be told from noise; only for 0/1 labels."""
    labels = np.concatenate([g.labels for g in groups])
    probs = np.concatenate([g.probs for g in groups])
    qid = np.concatenate([np.full(len(g.labels), i) for i, g in enumerate(groups)])
    metrics = {
        "n": int(len(labels)),
        "queries": len(groups),
        "auc": roc_auc(labels, scores),
        "logloss": log_loss(labels, scores),
        "ndcg@10": mean_ndcg_at_k(qid, labels, scores, k=10),
        **calibration_metrics(labels, scores, probs),
    }
    if bootstrap > 0 and np.isin(labels, (0.0, 1.0)).all():
        _, metrics["auc_lo"], metrics["auc_hi"] = bootstrap_auc(labels, scores, qid, n=bootstrap)
    if not np.isnan(probs).any():
        metrics["bayes_auc"] = expected_auc(probs, probs)
        # the true probabilities' AUC on these sampled labels: the ceiling to compare "auc" with
        metrics["bayes_auc_sampled"] = roc_auc(labels, probs)
        # AUC against the true probabilities in expectation: less noisy than sampled labels
        metrics["expected_auc"] = expected_auc(probs, scores)
    return metrics


def calibration_metrics(
    labels: np.ndarray, scores: np.ndarray, probs: np.ndarray | None = None
) -> dict:
    """Whether the scores mean what they say: ECE (15 equal-width bins, L1) and Brier. Where the
    data has true probabilities (``probs`` without NaN), also the ECE against them
    (``expected_ece``: no label noise) and the ECE the true probabilities themselves score on
    these labels (``bayes_ece``: the floor "ece" can reach on a split of this size)."""
    out = {
        "ece": expected_calibration_error(labels, scores),
        "brier": brier_score(labels, scores),
    }
    if probs is not None and len(probs) and not np.isnan(probs).any():
        out["expected_ece"] = expected_calibration_error(probs, scores)
        out["bayes_ece"] = expected_calibration_error(labels, probs)
    return out


def evaluate(
    scorer, groups: list[EncodedRequest], batch_queries: int = 32, progress: bool = False
) -> dict:
    return quality_metrics(groups, score_groups(scorer, groups, batch_queries, progress))


def evaluate_checkpoint(
    path: str | Path,
    data_dir: str | Path,
    split: str,
    dtype: torch.dtype | None = None,
    limit: int | None = None,
    progress: bool = False,
    bootstrap: int = BOOTSTRAP,
    calibrated: bool = True,
) -> tuple[dict, np.ndarray, CheckpointInfo]:
    """(metrics, per-item scores, checkpoint info) of the checkpoint at ``path`` on ``split``
    (its first ``limit`` rows if given), scored by the torch scorer as the server runs it; the
    AUC with a bootstrap interval over ``bootstrap`` replicates (0: none). Where the checkpoint
    has a score calibrator the scores are calibrated, as served (``calibrated=False``: the
    model's own), and the metrics name its method."""
    cal = load_calibrator(path) if calibrated else None  # refused before any scoring
    model, tokenizer, task, info = load_checkpoint(path, dtype=dtype, compute=True)
    rows = head_rows(data_dir, split, limit) if limit else read_split(data_dir, split)
    groups = encode_groups(rows, tokenizer, task)
    scores = score_groups(TorchScorer(model, tokenizer, task), groups, progress=progress)
    if cal is not None:
        scores = cal.apply(scores)
    metrics = quality_metrics(groups, scores, bootstrap)
    metrics["calibrator"] = cal.method if cal is not None else None
    return metrics, scores, info
