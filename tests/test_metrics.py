"""Metrics against independently computed references (scikit-learn, brute force)."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, ndcg_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from ranking.metrics import expected_auc, log_loss, mean_ndcg_at_k, ndcg_at_k, roc_auc


def brute_auc(y, s):
    pos = [a for a, lab in zip(s, y, strict=True) if lab == 1]
    neg = [a for a, lab in zip(s, y, strict=True) if lab == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_hand_computed():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 7, 300) / 7.0  # heavy ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_rejects_one_class_and_bad_labels():
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [0.2, 0.3])


def test_expected_auc_equals_average_over_all_labelings():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 6)
    s = np.array([0.1, 0.5, 0.5, 0.2, 0.9, 0.3])  # includes a tie
    num = den = 0.0
    # exact expectation of the pairwise-count numerator and denominator over 2^6 labelings
    for labels in itertools.product([0, 1], repeat=6):
        w = np.prod([pi if li else 1 - pi for pi, li in zip(p, labels, strict=True)])
        for i, j in itertools.permutations(range(6), 2):
            if labels[i] == 1 and labels[j] == 0:
                den += w
                num += w * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    assert expected_auc(p, s) == pytest.approx(num / den, rel=1e-12)
    # ranking by the truth is optimal
    assert expected_auc(p, p) >= expected_auc(p, s)


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    p = rng.uniform(0.01, 0.99, 200)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-10)
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_ndcg_matches_sklearn_and_hand_value():
    rel = [3, 2, 3, 0, 1, 2]
    s = [0.9, 0.8, 0.1, 0.7, 0.2, 0.3]
    # hand: gains 2^r-1 = [7,3,7,0,1,3]; order by score -> idx 0,1,3,5,4,2
    dcg = (
        7 / np.log2(2)
        + 3 / np.log2(3)
        + 0 / np.log2(4)
        + 3 / np.log2(5)
        + 1 / np.log2(6)
        + 7 / np.log2(7)
    )
    ideal = 7 / np.log2(2) + 7 / np.log2(3) + 3 / np.log2(4) + 3 / np.log2(5) + 1 / np.log2(6) + 0
    assert ndcg_at_k(rel, s, k=6) == pytest.approx(dcg / ideal)
    # sklearn uses linear gains; with binary relevance the two agree
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 20)
    sc = rng.uniform(size=20)
    assert ndcg_at_k(y, sc, k=10) == pytest.approx(ndcg_score([y], [sc], k=10))


def test_mean_ndcg_skips_lists_without_gain():
    groups = [0, 0, 1, 1]
    assert mean_ndcg_at_k(groups, [1, 0, 0, 0], [0.9, 0.1, 0.5, 0.4]) == pytest.approx(1.0)


# ---- calibration ---------------------------------------------------------------------------
def test_ece_and_brier_hand_computed():
    from ranking.metrics import brier_score, expected_calibration_error, reliability_bins

    y, p = [0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.3, 1.0]
    # 5 bins: [0, .2) p .1 y 0 -> gap .1; [.2, .4) p .3 y 0 -> .3; [.8, 1] p .9 .8 1.0, all 1
    # -> gap .1 for 3 pairs: (.1 + .3 + 3 * .1) / 5
    assert expected_calibration_error(y, p, bins=5) == pytest.approx(0.14)
    assert brier_score(y, p) == pytest.approx((0.01 + 0.01 + 0.04 + 0.09 + 0.0) / 5)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    b = reliability_bins(y, p, bins=5)
    assert b["count"] == [1, 1, 0, 0, 3]  # 1.0 falls in the last bin
    assert b["confidence"][4] == pytest.approx(0.9) and b["accuracy"][4] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_ece_is_near_zero_for_calibrated_scores_and_not_for_shifted_ones(seed):
    from ranking.metrics import expected_calibration_error

    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(float)  # outcomes drawn at the stated rate
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p + 0.1, 0, 1)) > 0.08


def test_ece_matches_the_definition_in_a_loop():
    """The vectorised bins against the textbook loop (torchmetrics' binary L1 convention)."""
    from ranking.metrics import expected_calibration_error

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 1000).astype(float)
    p = rng.uniform(0, 1, 1000)
    edges = np.linspace(0, 1, 16)
    total = 0.0
    for i in range(15):
        inside = (p >= edges[i]) & ((p < edges[i + 1]) if i < 14 else (p <= 1.0))
        if inside.any():
            total += abs(y[inside].mean() - p[inside].mean()) * inside.sum() / len(p)
    assert expected_calibration_error(y, p) == pytest.approx(total)
