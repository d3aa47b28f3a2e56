"""The non-LLM baseline: LightGBM on tabular features, trained and scored on the same splits.

This is what a recommendation team would run without an LLM, so the report shows it next to
the LLM ranker whichever side wins. Why LightGBM (binary objective): gradient-boosted trees
are the standard production ranker on tabular features; they take counts, means and
categories as they come (no scaling, no encoding), learn interactions such as genre affinity
times item popularity that a logistic regression would need written by hand, train in seconds
on two CPU cores and early-stop on validation. A factorization model would only see (user,
item) ids, and most test users and many test items are sparse in the train period.

Features:
- from the contract rows alone, so any team's folder gets a baseline: a target encoding of the
  item (by ``item_id``, else its text) learned from train labels (out-of-fold for train rows),
  word overlap between query and item text, text lengths, items in the query;
- for a folder whose ``meta.json`` names them (``baseline_features``: the producer knows what
  its rows join on; the MovieLens builder writes ``["movielens"]``), from the raw RecBole
  files keyed by the rows' (user_id, item_id, cutoff): the user's profile (age, gender,
  occupation); their history strictly before the cutoff (count, mean rating, share >= 4, the
  same over the last ``history`` ratings the prompt shows); genre affinity (their mean rating
  and count for the item's genres); the item's year and genres; the item's rating count, mean
  and share >= 4 over all users before min(cutoff, T1), so evaluation rows see the train
  period only, as the LLM's weights do.
The baseline sees the user's whole history; the prompt shows the last ``history`` ratings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from bisect import bisect_left
from collections import defaultdict
from pathlib import Path

import numpy as np

from ranking.bootstrap import bootstrap_auc
from ranking.datafolder import DataError, read_meta, read_split, split_path
from ranking.fingerprint import content_hash
from ranking.metrics import log_loss, mean_ndcg_at_k, roc_auc

BASELINE_FILE = "baseline.json"  # in the data folder: the compression report reads it
FOLDS = 5
PRIOR = 10.0  # pseudo-count pulling sparse means toward the global mean
WORD = re.compile(r"[a-z0-9']+")
PARAMS = {
    "objective": "binary",
    "metric": "auc",
    "learning_rate": 0.03,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    # one thread: on a busy 2-core machine LightGBM's OpenMP threads spin-wait on each other
    # (measured: 150 trees on 80k rows took 10 s with one thread, 130 s with two)
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}


def _smoothed(total: float, count: float, prior_mean: float) -> float:
    return (total + PRIOR * prior_mean) / (count + PRIOR)


def _fold(query_id) -> int:
    return hashlib.blake2b(str(query_id).encode(), digest_size=2).digest()[0] % FOLDS


# ---- features any data folder has --------------------------------------------------------------
class ContractFeatures:
    """Item target encoding from train labels, text overlap and lengths."""

    names = ["item_label_te", "item_train_rows", "word_overlap", "query_chars", "item_chars",
             "n_items"]  # fmt: skip

    def __init__(self, train: list[dict]):
        self.mean = float(np.mean([r["label"] for r in train]))
        self.total: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.fold_total = [defaultdict(float) for _ in range(FOLDS)]
        self.fold_count = [defaultdict(int) for _ in range(FOLDS)]
        for r in train:
            key, f = self._key(r), _fold(r["query_id"])
            self.total[key] += r["label"]
            self.count[key] += 1
            self.fold_total[f][key] += r["label"]
            self.fold_count[f][key] += 1

    @staticmethod
    def _key(row: dict) -> str:
        return str(row["item_id"]) if row.get("item_id") is not None else row["item"]

    def __call__(self, rows: list[dict], in_train: bool) -> np.ndarray:
        n_items: dict[str, int] = defaultdict(int)
        for r in rows:
            n_items[str(r["query_id"])] += 1
        words: dict[str, set[str]] = {}
        out = np.empty((len(rows), len(self.names)))
        for i, r in enumerate(rows):
            key = self._key(r)
            total, count = self.total.get(key, 0.0), self.count.get(key, 0)
            if in_train:  # out-of-fold: a row's own label never encodes its item
                f = _fold(r["query_id"])
                total -= self.fold_total[f].get(key, 0.0)
                count -= self.fold_count[f].get(key, 0)
            q = words.get(r["query"])
            if q is None:
                q = words[r["query"]] = set(WORD.findall(r["query"].lower()))
            it = set(WORD.findall(r["item"].lower()))
            out[i] = (
                _smoothed(total, count, self.mean),
                count,
                len(q & it) / max(1, len(it)),
                len(r["query"]),
                len(r["item"]),
                n_items[str(r["query_id"])],
            )
        return out


# ---- MovieLens features from the raw files -----------------------------------------------------
class MovieLensFeatures:
    """User, history, genre-affinity and item features keyed by (user_id, item_id, cutoff)."""

    def __init__(self, meta: dict):
        from compression.data.movielens import load_raw

        source = meta.get("source_folder")
        self.raw = load_raw(source if source and Path(source).is_dir() else None,
                            meta["config"].get("max_users"))  # fmt: skip
        self.t1 = int(meta["cutoffs"]["T1"])
        self.n_recent = int(meta["config"]["history"])
        self.genres = sorted({g for m in self.raw.movies.values() for g in m.genres})
        self.occupations = sorted({u.occupation for u in self.raw.users.values()})
        by_item: dict[str, list[tuple[int, float]]] = defaultdict(list)
        all_ratings = []
        for rs in self.raw.ratings.values():
            for r in rs:
                by_item[r.item].append((r.ts, r.rating))
                if r.ts < self.t1:
                    all_ratings.append(r.rating)
        self.mean_rating = float(np.mean(all_ratings))
        self.mean_pos = float(np.mean(np.array(all_ratings) >= 4))
        self.item_ts, self.item_sum, self.item_pos = {}, {}, {}
        for item, rs in by_item.items():
            rs.sort()
            self.item_ts[item] = [t for t, _ in rs]
            self.item_sum[item] = np.cumsum([0.0] + [x for _, x in rs])
            self.item_pos[item] = np.cumsum([0.0] + [x >= 4 for _, x in rs])
        self.names = [
            "age", "female", "occupation",
            "hist_count", "hist_mean", "hist_pos", "hist_std", "recent_mean", "recent_pos",
            "genre_mean", "genre_count", "genre_share", "recent_genre_share",
            "item_year", "item_ratings", "item_mean", "item_pos",
            *("genre_" + re.sub(r"\W", "", g) for g in self.genres),
        ]  # fmt: skip
        self.categorical = ["occupation"]

    def _history(self, user: str, cutoff: int) -> dict:
        from compression.data.render import history_before

        hist = history_before(self.raw.ratings[user], cutoff)
        ratings = np.array([h.rating for h in hist]) if hist else np.zeros(0)
        recent = hist[-self.n_recent :]
        by_genre: dict[str, list[float]] = defaultdict(list)
        for h in hist:
            for g in self.raw.movies[h.item].genres:
                by_genre[g].append(h.rating)
        recent_genres = [g for h in recent for g in self.raw.movies[h.item].genres]
        return {
            "n": len(hist),
            "mean": float(ratings.mean()) if len(ratings) else self.mean_rating,
            "pos": float((ratings >= 4).mean()) if len(ratings) else self.mean_pos,
            "std": float(ratings.std()) if len(ratings) else 0.0,
            "recent": [h.rating for h in recent],
            "by_genre": by_genre,
            "recent_genres": recent_genres,
        }

    def __call__(self, rows: list[dict], in_train: bool) -> np.ndarray:
        del in_train  # every feature here is computed from strictly earlier ratings
        cache: dict[tuple[str, int], dict] = {}
        out = np.full((len(rows), len(self.names)), np.nan)
        g_index = {g: i for i, g in enumerate(self.genres)}
        for i, row in enumerate(rows):
            user, item, cutoff = str(row["user_id"]), str(row["item_id"]), int(row["cutoff"])
            h = cache.get((user, cutoff))
            if h is None:
                h = cache[(user, cutoff)] = self._history(user, cutoff)
            u, m = self.raw.users[user], self.raw.movies[item]
            genre_ratings = [x for g in m.genres for x in h["by_genre"].get(g, ())]
            recent = np.array(h["recent"]) if h["recent"] else None
            as_of = min(cutoff, self.t1)  # evaluation rows: the train period only
            ts = self.item_ts.get(item, [])
            k = bisect_left(ts, as_of)
            item_sum = self.item_sum[item][k] if ts else 0.0
            item_pos = self.item_pos[item][k] if ts else 0.0
            genres = np.zeros(len(self.genres))
            for g in m.genres:
                genres[g_index[g]] = 1.0
            out[i] = [
                u.age,
                float(u.gender == "female"),
                self.occupations.index(u.occupation),
                h["n"],
                h["mean"],
                h["pos"],
                h["std"],
                recent.mean() if recent is not None else np.nan,
                (recent >= 4).mean() if recent is not None else np.nan,
                _smoothed(sum(genre_ratings), len(genre_ratings), h["mean"]),
                len(genre_ratings),
                len(genre_ratings) / max(1, h["n"] * max(1, len(m.genres))),
                sum(g in m.genres for g in h["recent_genres"]) / max(1, len(h["recent"])),
                float(m.year) if m.year.isdigit() else np.nan,
                k,
                _smoothed(item_sum, k, self.mean_rating),
                _smoothed(item_pos, k, self.mean_pos),
                *genres,
            ]
        return out


# the feature sets a producer can name in its folder's meta.json, beyond the contract's
EXTRA_FEATURES = {"movielens": MovieLensFeatures}


def _extra_features(data_dir: str | Path, meta: dict) -> list:
    """The feature sets ``meta.json`` names (``baseline_features``), built from the meta. A
    folder the MovieLens builder wrote before it named them is known by its generator."""
    names = meta.get("baseline_features")
    if names is None:
        names = ["movielens"] if meta.get("generator") == "compression.movielens" else []
    unknown = [n for n in names if n not in EXTRA_FEATURES]
    if unknown:
        raise DataError(
            f"{Path(data_dir) / 'meta.json'}: baseline_features {unknown} unknown (known: "
            f"{', '.join(EXTRA_FEATURES)})"
        )
    return [EXTRA_FEATURES[n](meta) for n in names]


# ---- train and evaluate ------------------------------------------------------------------------
@dataclasses.dataclass
class _Table:
    """Every split's rows as feature matrices, labels and weights."""

    splits: dict[str, list[dict]]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    w: dict[str, np.ndarray]
    names: list[str]
    categorical: list[str]
    feature_sets: list[str]
    seconds: float


def _table(data_dir: str | Path) -> _Table:
    t0 = time.time()
    meta = read_meta(data_dir)
    splits = {s: read_split(data_dir, s) for s in ("train", "validation", "test")}
    featurizers = [ContractFeatures(splits["train"]), *_extra_features(data_dir, meta)]
    x = {
        s: np.hstack([f(rows, in_train=s == "train") for f in featurizers])
        for s, rows in splits.items()
    }
    return _Table(
        splits=splits,
        x=x,
        y={s: np.array([r["label"] for r in rows], dtype=np.float64) for s, rows in splits.items()},
        w={s: np.array([r.get("weight", 1.0) for r in rows]) for s, rows in splits.items()},
        names=[n for f in featurizers for n in f.names],
        categorical=[n for f in featurizers for n in getattr(f, "categorical", [])],
        feature_sets=[type(f).__name__ for f in featurizers],
        seconds=time.time() - t0,
    )


def _is_hard(y: np.ndarray) -> bool:
    return bool(np.isin(y, (0.0, 1.0)).all())


def _fit(t: _Table, seed: int, rows: np.ndarray | None = None):
    """LightGBM on the train rows (``rows``: a boolean mask of them, default all), early-stopped
    on validation."""
    import lightgbm as lgb

    # soft labels: the same log loss, which LightGBM calls cross_entropy
    objective = "binary" if _is_hard(t.y["train"]) else "cross_entropy"
    params = {**PARAMS, "seed": seed, "objective": objective}
    pick = slice(None) if rows is None else rows
    train = lgb.Dataset(t.x["train"][pick], t.y["train"][pick], weight=t.w["train"][pick],
                        feature_name=t.names, categorical_feature=t.categorical,
                        free_raw_data=False)  # fmt: skip
    valid = lgb.Dataset(t.x["validation"], t.y["validation"], weight=t.w["validation"],
                        reference=train)  # fmt: skip
    return lgb.train(
        params,
        train,
        num_boost_round=3000,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(100, verbose=False)],
    )


def split_predictions(data_dir: str | Path, split: str = "test", seed: int = 0) -> np.ndarray:
    """The baseline's probabilities for a validation or test split's rows, in file order (what
    ``run_baseline`` scores), for comparing or averaging other models with it row by row."""
    if split not in ("validation", "test"):
        raise ValueError(f"split must be validation or test, got {split!r}")
    t = _table(data_dir)
    booster = _fit(t, seed)
    return booster.predict(t.x[split], num_iteration=booster.best_iteration)


def train_predictions(data_dir: str | Path, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The baseline's out-of-fold probabilities for the train split's rows, in file order, and
    how they were made: each of ``FOLDS`` query folds is scored by a LightGBM whose rows and
    label-derived features (the item target encoding, of train and validation rows alike) come
    from the other folds only, early-stopped on validation. So no train label reaches its own
    fold's predictions, and a teacher can learn from them as soft targets
    (``compression.teacher``: distillation from the tabular model) without its labels leaking
    back through them."""
    t0 = time.time()
    t = _table(data_dir)
    train = t.splits["train"]
    folds = np.array([_fold(r["query_id"]) for r in train])
    n_contract = len(ContractFeatures.names)  # the label-derived columns, first in the table
    out = np.full(len(folds), np.nan)
    trees = []
    for f in range(FOLDS):
        held = folds == f
        if not held.any():
            continue
        rest = [r for r, h in zip(train, held, strict=True) if not h]
        contract = ContractFeatures(rest)
        x = t.x["train"].copy()
        x[~held, :n_contract] = contract(rest, in_train=True)
        x[held, :n_contract] = contract([r for r, h in zip(train, held, strict=True) if h],
                                        in_train=False)  # fmt: skip
        # validation steers early stopping: its target encoding must not see the held fold
        xv = t.x["validation"].copy()
        xv[:, :n_contract] = contract(t.splits["validation"], in_train=False)
        fold_table = dataclasses.replace(t, x={**t.x, "train": x, "validation": xv})
        booster = _fit(fold_table, seed, rows=~held)
        out[held] = booster.predict(x[held], num_iteration=booster.best_iteration)
        trees.append(booster.best_iteration)
    info = {
        "model": "lightgbm",
        "folds": FOLDS,
        "trees": trees,
        "features": len(t.names),
        "seconds": round(time.time() - t0, 1),
    }
    if _is_hard(t.y["train"]):
        info["train_auc_out_of_fold"] = round(roc_auc(t.y["train"], out), 4)
    return out, info


def run_baseline(data_dir: str | Path, seed: int = 0, bootstrap: int = 1000) -> dict:
    """Trains LightGBM on train, early-stops on validation, scores test; returns the metrics
    (test AUC with a bootstrap 95% interval over queries)."""
    import lightgbm as lgb

    t0 = time.time()
    t = _table(data_dir)
    splits, x, y, names = t.splits, t.x, t.y, t.names
    t1 = time.time()
    booster = _fit(t, seed)
    t_train = time.time() - t1
    hard_labels = all(_is_hard(v) for v in y.values())

    result: dict = {
        "model": "lightgbm",
        "objective": "binary" if _is_hard(y["train"]) else "cross_entropy",
        "lightgbm_version": lgb.__version__,
        "data": str(data_dir),
        # what the report checks before showing this result next to the LLM rows
        "data_hash": {s: content_hash(split_path(data_dir, s)) for s in splits},
        "features": names,
        "feature_sets": t.feature_sets,
        "best_iteration": booster.best_iteration,
        "feature_seconds": round(t.seconds, 1),
        "train_seconds": round(t_train, 1),
    }
    for split in ("validation", "test"):
        p = booster.predict(x[split], num_iteration=booster.best_iteration)
        qids = [str(r["query_id"]) for r in splits[split]]
        auc, lo, hi = (
            bootstrap_auc(y[split], p, qids, n=bootstrap, seed=seed)
            if hard_labels
            else (np.nan,) * 3  # AUC needs 0/1 labels
        )
        result[split] = {
            "rows": len(p),
            "queries": len(set(qids)),
            "auc": round(float(auc), 4),
            "auc_lo": round(float(lo), 4),
            "auc_hi": round(float(hi), 4),
            "logloss": round(log_loss(y[split], p), 4),
            "ndcg@10": round(mean_ndcg_at_k(qids, y[split], p, 10), 4),
        }
    if hard_labels:
        p = booster.predict(x["train"], num_iteration=booster.best_iteration)
        result["train_auc"] = round(roc_auc(y["train"], p), 4)
    gains = booster.feature_importance("gain")
    top = np.argsort(-gains)[:10]
    result["top_features"] = {names[i]: round(float(gains[i] / gains.sum()), 3) for i in top}
    result["seconds"] = round(time.time() - t0, 1)
    return result
