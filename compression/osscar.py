"""OSSCAR group selection: the pure math of structured pruning (no model code).

Setting (Meng et al. 2024, "OSSCAR: One-Shot Structured Pruning in Vision and Language Models
with Combinatorial Optimization"). A linear layer ``y = x W0`` has ``p`` input channels and ``m``
outputs (``W0`` is ``(p, m)``: the TRANSPOSE of ``nn.Linear.weight``). The input channels come in
*groups* (an MLP neuron is one channel of ``down_proj``; an attention head is ``head_dim``
channels of ``o_proj``; a KV group is all the channels of its query heads). Pruning keeps a
subset ``S`` of groups and refits the kept weights so that the layer's output on calibration
inputs ``X`` (``n x p``) changes as little as possible.

Everything is expressed through Gram matrices, accumulated on the fly (``X`` is never stored):

    H = X^T X   (p x p),        G = H W0 = X^T Y   (p x m),       Y = X W0

Objective. With ``Lam = diag(lam)`` (``lam_j = ridge * mean(diag H)`` on prunable channels, 0 on
*fixed* channels such as the constant-1 channel that carries a bias), a subset ``S`` costs

    f(S) = min_W ||Y - X_S W||^2 + ||Lam^1/2 W||^2 = tr(Y^T Y) - tr(G_S^T (H_SS + Lam_S)^-1 G_S)

and its minimiser is the ridge refit ``W_S = (H_SS + Lam_S)^-1 G_S``. The reported error is the
plain reconstruction error of those weights,

    err(S, W_S) = ||X W0 - X_S W_S||^2 = tr(W0^T H W0) - 2 tr(W_S^T G_S) + tr(W_S^T H_SS W_S),

and ``rel_error = err / tr(W0^T H W0)`` (relative to the dense output's energy).

Algorithm (all exact for ``f``, in float64):

1. **Greedy backward removal** with OBS updates. Keep ``Hinv = (H_SS + Lam_S)^-1`` and
   ``W = Hinv G_S``. Removing group ``g`` raises ``f`` by exactly
   ``cost_g = tr(W_g^T (Hinv_gg)^-1 W_g)`` (block inverse); remove the cheapest, then
   ``W <- W - Hinv[:, g] Hinv_gg^-1 W_g`` and ``Hinv <- Hinv - Hinv[:, g] Hinv_gg^-1 Hinv[g, :]``.
   ``remove_per_step`` > 1 removes that many cheapest groups per update (faster, slightly
   less exact; local search repairs it).
2. **Local search** (swaps). For a removed group ``J`` the exact decrease of ``f`` when adding
   it is ``gain_J = tr(r_J^T C_J^-1 r_J)`` with ``r_J = G_J - H_JS W_S`` and the Schur
   complement ``C_J = H_JJ + Lam_J - H_JS Hinv H_SJ``. The ``swap_candidates`` removed groups
   with the largest gains are each added tentatively (bordered inverse update); in ``S + J`` the
   exact removal costs of all kept groups follow from the OBS formula, so the best swap partner
   of ``J`` and the exact new objective ``f(S + J - I) = f(S) - gain_J + cost_I(S + J)`` are known
   without re-solving. The best improving swap is applied; stop after ``local_search_iters``
   swaps or when no candidate improves ``f`` by more than a relative ``1e-9``.
3. **Refit**: ``W_S`` solved from scratch (Cholesky) for the final ``S``.

Partitions (GQA): when ``partitions`` is given, every partition keeps the same number of groups
(``n_keep / n_partitions``): greedy removal only takes groups from partitions above that count,
and swaps only exchange groups of the same partition. Query heads of one KV group form a
partition, so the pruned model keeps ``num_attention_heads`` divisible by
``num_key_value_heads``.

If nothing is removed the layer is returned unchanged (``W0``, no ridge shrinkage), so keeping
every group is exactly the identity. ``method="magnitude"`` is the baseline: keep the groups with
the largest Frobenius norm of their rows of ``W0`` (per partition), no refit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

METHODS = ("osscar", "magnitude")
_DT = torch.float64


@dataclass
class Selection:
    """The outcome of one layer's selection.

    ``kept_groups``: sorted indices of the kept groups; ``channels``: the kept input channels in
    the order of ``weights``' rows (groups in ``kept_groups`` order, each group's channels in
    the given order, then the fixed channels); ``weights``: ``(len(channels), m)`` float64, the
    refit (or, for magnitude / keep-all, original) weights of those channels.
    """

    kept_groups: np.ndarray
    channels: np.ndarray
    weights: torch.Tensor
    error: float
    rel_error: float
    objective: float
    swaps: int = 0
    history: dict = field(default_factory=dict)


def _as_t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(_DT)


def objective(H, W0, channels, lam) -> float:
    """``f(S)``: the ridge-regularised error of the best refit on ``channels`` (exact solve)."""
    H, W0, lam = _as_t(H), _as_t(W0), _as_t(lam)
    S = torch.as_tensor(np.asarray(channels), dtype=torch.long)
    G = H @ W0
    total = float((W0 * G).sum())
    if len(S) == 0:
        return total
    W = _solve(H[S][:, S] + torch.diag(lam[S]), G[S])
    return total - float((G[S] * W).sum())


def reconstruction_error(H, W0, channels, W) -> float:
    """``||X W0 - X_S W||^2`` from Gram matrices alone."""
    H, W0, W = _as_t(H), _as_t(W0), _as_t(W)
    S = torch.as_tensor(np.asarray(channels), dtype=torch.long)
    G = H @ W0
    err = float((W0 * G).sum())
    if len(S):
        err += -2.0 * float((W * G[S]).sum()) + float((W * (H[S][:, S] @ W)).sum())
    return max(err, 0.0)


def ridge_vector(H, prunable: np.ndarray, ridge: float) -> torch.Tensor:
    """``lam``: ``ridge * mean(diag H)`` over the prunable channels, 0 on fixed channels."""
    H = _as_t(H)
    d = torch.diagonal(H)
    scale = float(d[torch.as_tensor(prunable, dtype=torch.long)].mean()) if len(prunable) else 1.0
    lam = torch.zeros(H.shape[0], dtype=_DT)
    lam[torch.as_tensor(prunable, dtype=torch.long)] = ridge * max(scale, 1e-12)
    return lam


def _solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return torch.linalg.lstsq(A, B).solution  # singular (ridge 0 on dead channels)


def _inv(A: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_inverse(L)
    return torch.linalg.pinv(A, hermitian=True)


class _State:
    """``S`` in compact form: ``act`` (active channel ids), ``Hinv`` and ``W`` over them."""

    def __init__(self, H, G, lam, groups, fixed, active_groups):
        self.H, self.G, self.lam = H, G, lam
        self.groups = groups  # (n_groups, d) long
        self.fixed = fixed  # (f,) long
        self.active = np.asarray(active_groups, dtype=bool).copy()
        self.refresh()

    def channels(self) -> torch.Tensor:
        g = self.groups[torch.as_tensor(np.flatnonzero(self.active))].reshape(-1)
        return torch.cat([g, self.fixed])

    def refresh(self) -> None:
        """Exact ``Hinv`` and ``W`` for the current ``S`` (also resets numerical drift)."""
        self.act = self.channels()
        A = self.H[self.act][:, self.act] + torch.diag(self.lam[self.act])
        self.Hinv = _inv(A)
        self.W = self.Hinv @ self.G[self.act]
        self._index()

    def _index(self) -> None:
        p = self.H.shape[0]
        self.pos = torch.full((p,), -1, dtype=torch.long)
        self.pos[self.act] = torch.arange(len(self.act))

    def f(self, total: float) -> float:
        return total - float((self.G[self.act] * self.W).sum())

    def removal_costs(self, gids: np.ndarray, Hinv=None, W=None, pos=None) -> torch.Tensor:
        """Exact increase of ``f`` when removing each group in ``gids`` (all active)."""
        Hinv = self.Hinv if Hinv is None else Hinv
        W = self.W if W is None else W
        pos = self.pos if pos is None else pos
        idx = pos[self.groups[torch.as_tensor(gids, dtype=torch.long)]]  # (k, d)
        Wg = W[idx]  # (k, d, m)
        if idx.shape[1] == 1:
            return (Wg[:, 0] ** 2).sum(-1) / Hinv[idx[:, 0], idx[:, 0]]
        B = Hinv[idx[:, :, None], idx[:, None, :]]  # (k, d, d)
        return (Wg * torch.linalg.solve(B, Wg)).sum((-1, -2))

    def remove(self, gids: Sequence[int]) -> None:
        """OBS downdate of ``Hinv`` and ``W``, then compaction."""
        R = self.pos[self.groups[torch.as_tensor(list(gids), dtype=torch.long)].reshape(-1)]
        Bi = _inv_small(self.Hinv[R][:, R])
        HR = self.Hinv[:, R]
        self.W = self.W - HR @ (Bi @ self.W[R])
        self.Hinv = self.Hinv - HR @ Bi @ HR.T
        keep = torch.ones(len(self.act), dtype=torch.bool)
        keep[R] = False
        self.act, self.W, self.Hinv = self.act[keep], self.W[keep], self.Hinv[keep][:, keep]
        self.active[list(gids)] = False
        self._index()

    def add_gains(self, gids: np.ndarray) -> torch.Tensor:
        """Exact decrease of ``f`` when adding each (inactive) group in ``gids``."""
        J = self.groups[torch.as_tensor(gids, dtype=torch.long)]  # (k, d)
        k, d = J.shape
        flat = J.reshape(-1)
        HJS = self.H[flat][:, self.act]  # (k d, s)
        R = (self.G[flat] - HJS @ self.W).reshape(k, d, -1)
        U = HJS @ self.Hinv  # (k d, s)
        if d == 1:
            C = self.H[flat, flat] + self.lam[flat] - (U * HJS).sum(-1)
            return (R[:, 0] ** 2).sum(-1) / C.clamp_min(1e-300)
        HJS3, U3 = HJS.reshape(k, d, -1), U.reshape(k, d, -1)
        C = self.H[J[:, :, None], J[:, None, :]] + torch.diag_embed(self.lam[J])
        C = C - U3 @ HJS3.transpose(1, 2)
        return (R * torch.linalg.solve(C, R)).sum((-1, -2))

    def bordered(self, gid: int):
        """``(Hinv', W', pos', gain)`` for ``S + gid`` (the group appended at the end)."""
        J = self.groups[gid]
        HSJ = self.H[self.act][:, J]
        u = self.Hinv @ HSJ  # (s, d)
        C = self.H[J][:, J] + torch.diag(self.lam[J]) - HSJ.T @ u
        Ci = _inv_small(C)
        r = self.G[J] - HSJ.T @ self.W
        WJ = Ci @ r
        W2 = torch.cat([self.W - u @ WJ, WJ])
        uCi = u @ Ci
        top = torch.cat([self.Hinv + uCi @ u.T, -uCi], dim=1)
        bot = torch.cat([-uCi.T, Ci], dim=1)
        Hinv2 = torch.cat([top, bot])
        pos2 = self.pos.clone()
        pos2[J] = torch.arange(len(self.act), len(self.act) + len(J))
        gain = float((r * WJ).sum())
        return Hinv2, W2, pos2, gain


def _inv_small(A: torch.Tensor) -> torch.Tensor:
    if A.shape[0] == 1:
        return 1.0 / A
    return torch.linalg.inv(A)


def select_groups(
    H,
    W0,
    groups,
    n_keep: int,
    *,
    fixed: Sequence[int] = (),
    partitions: Sequence[int] | None = None,
    method: str = "osscar",
    ridge: float = 1e-2,
    local_search_iters: int = 50,
    remove_per_step: int | None = 1,
    swap_candidates: int = 16,
    refresh_every: int = 32,
) -> Selection:
    """Choose ``n_keep`` of the ``groups`` (an ``(n_groups, d)`` array of channel indices) to
    keep, and their refit weights; see the module docstring for the math.

    ``H``: ``(p, p)`` Gram matrix of the inputs; ``W0``: ``(p, m)`` original weights (rows =
    input channels); ``fixed``: channels that are always kept and not part of any group (e.g. a
    constant-1 bias channel); ``partitions``: partition id of each group (equal counts kept in
    each); ``remove_per_step``: groups removed per greedy update (``None``: about 64 updates in
    all).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    H, W0 = _as_t(H), _as_t(W0)
    groups_np = np.asarray(groups, dtype=np.int64)
    if groups_np.ndim == 1:
        groups_np = groups_np[:, None]
    n_groups = groups_np.shape[0]
    groups_t = torch.as_tensor(groups_np)
    fixed_t = torch.as_tensor(np.asarray(fixed, dtype=np.int64))
    if not 0 < n_keep <= n_groups:
        raise ValueError(f"n_keep={n_keep} must be in 1..{n_groups}")
    part = np.zeros(n_groups, dtype=np.int64) if partitions is None else np.asarray(partitions)
    labels, part = np.unique(part, return_inverse=True)
    n_parts = len(labels)
    if n_keep % n_parts:
        raise ValueError(f"n_keep={n_keep} is not divisible by the {n_parts} partitions")
    per_part = n_keep // n_parts
    counts = np.bincount(part, minlength=n_parts)
    if (counts < per_part).any():
        raise ValueError(f"a partition has fewer than {per_part} groups")

    G = H @ W0
    total = float((W0 * G).sum())
    prunable = groups_np.reshape(-1)
    lam = ridge_vector(H, prunable, ridge)

    def finish(kept: np.ndarray, weights: torch.Tensor | None, swaps: int, hist: dict):
        kept = np.sort(kept)
        ch = np.concatenate([groups_np[kept].reshape(-1), np.asarray(fixed, dtype=np.int64)])
        ch_t = torch.as_tensor(ch)
        if weights is None:
            weights = _solve(H[ch_t][:, ch_t] + torch.diag(lam[ch_t]), G[ch_t])
        err = reconstruction_error(H, W0, ch, weights)
        f = total - float((G[ch_t] * weights).sum()) if method == "osscar" else err
        return Selection(
            kept_groups=kept,
            channels=ch,
            weights=weights,
            error=err,
            rel_error=err / total if total > 0 else 0.0,
            objective=f,
            swaps=swaps,
            history=hist,
        )

    if n_keep == n_groups:  # nothing removed: exactly the identity
        kept = np.arange(n_groups)
        ch = np.concatenate([groups_np.reshape(-1), np.asarray(fixed, dtype=np.int64)])
        return finish(kept, W0[torch.as_tensor(ch)].clone(), 0, {})

    if method == "magnitude":
        norms = torch.linalg.vector_norm(W0[groups_t], dim=(-1, -2)).numpy()
        kept = []
        for q in range(n_parts):
            members = np.flatnonzero(part == q)
            kept.extend(members[np.argsort(-norms[members], kind="stable")[:per_part]])
        kept = np.asarray(kept)
        ch = np.concatenate([groups_np[np.sort(kept)].reshape(-1), np.asarray(fixed, np.int64)])
        return finish(kept, W0[torch.as_tensor(ch)].clone(), 0, {})

    # ---- 1. greedy backward removal ---------------------------------------------------------
    st = _State(H, G, lam, groups_t, fixed_t, np.ones(n_groups, dtype=bool))
    n_remove = n_groups - n_keep
    step = remove_per_step or max(1, math.ceil(n_remove / 64))
    left = counts.copy()
    removed_since_refresh = 0
    while st.active.sum() > n_keep:
        cand = np.flatnonzero(st.active & (left[part] > per_part))
        costs = st.removal_costs(cand).numpy()
        take, budget = [], min(step, int(st.active.sum()) - n_keep)
        for i in np.argsort(costs, kind="stable"):
            g = cand[i]
            if left[part[g]] > per_part:
                take.append(int(g))
                left[part[g]] -= 1
                if len(take) == budget:
                    break
        st.remove(take)
        removed_since_refresh += len(take)
        if removed_since_refresh >= refresh_every * step:
            st.refresh()
            removed_since_refresh = 0
    st.refresh()
    f_greedy = st.f(total)

    # ---- 2. local search: exact best swap among the most promising additions ---------------
    swaps = 0
    f_cur = f_greedy
    for _ in range(local_search_iters):
        inactive = np.flatnonzero(~st.active)
        if len(inactive) == 0:
            break
        gains = st.add_gains(inactive).numpy()
        best = (0.0, None, None)
        for i in np.argsort(-gains, kind="stable")[:swap_candidates]:
            j = int(inactive[i])
            Hinv2, W2, pos2, gain = st.bordered(j)
            partners = np.flatnonzero(st.active & (part == part[j]))
            costs = st.removal_costs(partners, Hinv2, W2, pos2).numpy()
            k = int(np.argmin(costs))
            delta = costs[k] - gain
            if delta < best[0]:
                best = (delta, j, int(partners[k]))
        if best[1] is None or -best[0] <= 1e-9 * max(abs(f_cur), 1e-300):
            break
        _, j, i = best
        st.active[j], st.active[i] = True, False
        st.refresh()
        f_new = st.f(total)
        if f_new >= f_cur:  # numerical noise: undo and stop
            st.active[j], st.active[i] = False, True
            st.refresh()
            break
        f_cur = f_new
        swaps += 1

    hist = {"objective_greedy": f_greedy, "objective_final": f_cur}
    return finish(np.flatnonzero(st.active), None, swaps, hist)


def brute_force(H, W0, groups, n_keep: int, *, fixed=(), partitions=None, ridge=1e-2):
    """The exact optimum of ``f`` by enumeration (tests only): ``(kept_groups, objective)``."""
    from itertools import combinations, product

    groups_np = np.asarray(groups, dtype=np.int64)
    if groups_np.ndim == 1:
        groups_np = groups_np[:, None]
    lam = ridge_vector(H, groups_np.reshape(-1), ridge)
    n = groups_np.shape[0]
    if partitions is None:
        subsets = combinations(range(n), n_keep)
    else:
        part = np.asarray(partitions)
        labels = np.unique(part)
        per = n_keep // len(labels)
        subsets = (
            tuple(x for c in combo for x in c)
            for combo in product(
                *[combinations(np.flatnonzero(part == q).tolist(), per) for q in labels]
            )
        )
    best = (math.inf, None)
    for s in subsets:
        ch = np.concatenate([groups_np[list(s)].reshape(-1), np.asarray(fixed, np.int64)])
        f = objective(H, W0, ch, lam)
        if f < best[0]:
            best = (f, np.sort(np.asarray(s)))
    return best[1], best[0]
