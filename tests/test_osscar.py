"""OSSCAR's math on small problems: exact optimum (against brute force) on planted problems,
local search beyond greedy, exact error formulas, bias channel, partitions, keep-all identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compression.osscar import (
    brute_force,
    objective,
    reconstruction_error,
    ridge_vector,
    select_groups,
)


def planted(seed, p=10, m=6, n=400, keep=(1, 3, 6, 8), weak=0.1, corr=0.3):
    """Correlated inputs; the output mostly comes from the ``keep`` channels."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) @ (np.eye(p) + corr * rng.normal(size=(p, p)))
    scale = np.full(p, weak)
    scale[list(keep)] = 1.0
    W0 = rng.normal(size=(p, m)) * scale[:, None]
    return X, W0


@pytest.mark.parametrize("seed", range(6))
def test_planted_channels_match_brute_force(seed):
    X, W0 = planted(seed)
    H = X.T @ X
    sel = select_groups(H, W0, np.arange(10), 4, ridge=1e-3)
    best, f_best = brute_force(H, W0, np.arange(10), 4, ridge=1e-3)
    assert sel.kept_groups.tolist() == best.tolist() == [1, 3, 6, 8]
    assert sel.objective == pytest.approx(f_best, rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_planted_groups_match_brute_force(seed):
    """5 groups of 2 channels, keep 2."""
    X, W0 = planted(seed, keep=(2, 3, 8, 9))
    H = X.T @ X
    groups = np.arange(10).reshape(5, 2)
    sel = select_groups(H, W0, groups, 2, ridge=1e-3, remove_per_step=1)
    best, f_best = brute_force(H, W0, groups, 2, ridge=1e-3)
    assert sel.kept_groups.tolist() == best.tolist() == [1, 4]
    assert sel.channels.tolist() == [2, 3, 8, 9]
    assert sel.objective == pytest.approx(f_best, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 26, 29])
def test_local_search_finds_the_optimum_where_greedy_does_not(seed):
    """Strongly correlated, non-planted problems where backward greedy stops short."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(10, 10))
    X = rng.normal(size=(200, 10)) @ (np.eye(10) + 0.5 * A)
    W0 = rng.normal(size=(10, 6))
    H = X.T @ X
    greedy = select_groups(H, W0, np.arange(10), 4, ridge=1e-3, local_search_iters=0)
    full = select_groups(H, W0, np.arange(10), 4, ridge=1e-3)
    best, f_best = brute_force(H, W0, np.arange(10), 4, ridge=1e-3)
    assert greedy.kept_groups.tolist() != best.tolist()
    assert full.kept_groups.tolist() == best.tolist()
    assert full.swaps >= 1
    assert full.objective == pytest.approx(f_best, rel=1e-9) and f_best < greedy.objective


def test_partitions_keep_equal_counts_and_match_brute_force():
    X, W0 = planted(3, keep=(0, 1, 2, 7))
    H = X.T @ X
    part = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    sel = select_groups(H, W0, np.arange(10), 4, partitions=part, ridge=1e-3)
    best, _ = brute_force(H, W0, np.arange(10), 4, partitions=part, ridge=1e-3)
    assert sel.kept_groups.tolist() == best.tolist()
    assert np.bincount(np.asarray(part)[sel.kept_groups]).tolist() == [2, 2]


def test_errors_match_explicit_activations():
    X, W0 = planted(1)
    H = X.T @ X
    sel = select_groups(H, W0, np.arange(10), 5, ridge=1e-2)
    direct = np.sum((X @ W0 - X[:, sel.channels] @ sel.weights.numpy()) ** 2)
    assert sel.error == pytest.approx(direct, rel=1e-8)
    assert reconstruction_error(H, W0, sel.channels, sel.weights) == pytest.approx(direct)
    assert sel.rel_error == pytest.approx(direct / np.sum((X @ W0) ** 2))
    # the refit is the ridge solution and the objective is its regularised error
    lam = ridge_vector(H, np.arange(10), 1e-2).numpy()
    S = sel.channels
    W = np.linalg.solve(H[np.ix_(S, S)] + np.diag(lam[S]), (H @ W0)[S])
    np.testing.assert_allclose(sel.weights.numpy(), W, rtol=1e-8, atol=1e-10)
    assert sel.objective == pytest.approx(objective(H, W0, S, lam), rel=1e-9)
    assert sel.objective == pytest.approx(direct + np.sum(lam[S][:, None] * W**2), rel=1e-8)


def test_keep_everything_is_the_identity():
    X, W0 = planted(2)
    sel = select_groups(X.T @ X, W0, np.arange(10), 10)
    assert torch.equal(sel.weights, torch.as_tensor(W0))
    assert sel.error == pytest.approx(0.0, abs=1e-6) and sel.rel_error < 1e-12


def test_bias_channel_is_kept_and_refit():
    """A constant-1 channel (fixed, not penalised) absorbs the mean of the removed channels."""
    rng = np.random.default_rng(0)
    n, p = 500, 6
    X = rng.normal(size=(n, p)) + 3.0  # non-zero means: dropping channels shifts the output
    Xa = np.concatenate([X, np.ones((n, 1))], axis=1)
    W0 = np.concatenate([rng.normal(size=(p, 3)), rng.normal(size=(1, 3))])
    Ha = Xa.T @ Xa
    sel = select_groups(Ha, W0, np.arange(p), 3, fixed=[p], ridge=1e-4)
    assert sel.channels[-1] == p and len(sel.channels) == 4
    no_bias_refit = np.sum((Xa @ W0 - Xa[:, sel.channels[:-1]] @ sel.weights[:-1].numpy()) ** 2)
    assert sel.error < 0.5 * no_bias_refit


def test_magnitude_keeps_largest_norms_without_refit():
    X, W0 = planted(0)
    W0 = W0 * np.arange(1, 11)[:, None]
    sel = select_groups(X.T @ X, W0, np.arange(10), 3, method="magnitude")
    norms = np.linalg.norm(W0, axis=1)
    assert sel.kept_groups.tolist() == sorted(np.argsort(-norms)[:3].tolist())
    np.testing.assert_array_equal(sel.weights.numpy(), W0[sel.kept_groups])


def test_osscar_beats_magnitude_and_batched_removal_is_close():
    rng = np.random.default_rng(5)
    n, p, m = 2000, 96, 16
    X = rng.normal(size=(n, p)) @ (np.eye(p) + 0.2 * rng.normal(size=(p, p)))
    W0 = rng.normal(size=(p, m))
    H = X.T @ X
    one = select_groups(H, W0, np.arange(p), 40, remove_per_step=1)
    batched = select_groups(H, W0, np.arange(p), 40, remove_per_step=None)
    mag = select_groups(H, W0, np.arange(p), 40, method="magnitude")
    assert one.rel_error < mag.rel_error and batched.rel_error < mag.rel_error
    assert batched.objective <= 1.05 * one.objective
    assert len(set(batched.kept_groups)) == 40


def test_bad_arguments():
    H, W0 = np.eye(4), np.ones((4, 2))
    with pytest.raises(ValueError, match="n_keep"):
        select_groups(H, W0, np.arange(4), 5)
    with pytest.raises(ValueError, match="divisible"):
        select_groups(H, W0, np.arange(4), 3, partitions=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="method"):
        select_groups(H, W0, np.arange(4), 2, method="random")
