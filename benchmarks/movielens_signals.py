"""Which numbers the MovieLens baseline's AUC rests on, and what averaging teachers gives.

``numbers``: LightGBM on a handful of numbers only (no text), each computed from what the
prompt hints may say (``data movielens --popularity --profile --affinity``): the movie's
train-split ratings before the query's cutoff, the user's earlier ratings, those in the
movie's genres, the recent ones. Feature sets: liked shares (exact and rounded to 10%), mean
ratings, mean ratings plus the recent mean. Test and validation AUC per set.

``ensemble``: the test AUC of each teacher and of the averages of their logits (every pair and
all), on folders of the same split built with different prompts (rows matched by query and
item), with bootstrap intervals over queries. ``--with-baseline`` adds the LightGBM baseline
(trained on the first run's folder) as one more member, and each teacher's correlation with it
(of logits): how much a teacher knows that the trees do not.

    python benchmarks/movielens_signals.py numbers --data artifacts/movielens-aff/data \\
        --json artifacts/movielens-aff/numbers.json
    python benchmarks/movielens_signals.py ensemble --run artifacts/movielens-pop \\
        --run artifacts/movielens-prof --run artifacts/movielens-aff \\
        --json artifacts/movielens-aff/ensemble.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from bisect import bisect_left
from collections import defaultdict
from pathlib import Path

import numpy as np

from ranking.bootstrap import bootstrap_auc
from ranking.datafolder import read_meta, read_split
from ranking.metrics import roc_auc

SPLITS = ("train", "validation", "test")
# (name, feature columns of ``_numbers``)
FEATURE_SETS = [
    ("liked shares", ["item_share", "item_n", "genre_share", "genre_n", "user_share", "user_n"]),
    (
        "liked shares, to 10%",
        ["item_share10", "item_n", "genre_share10", "genre_n", "user_share10", "user_n"],
    ),  # fmt: skip
    ("mean ratings", ["item_mean", "item_n", "genre_mean", "genre_n", "user_mean", "user_n"]),
    (
        "mean ratings + recent mean",
        ["item_mean", "item_n", "genre_mean", "genre_n", "user_mean", "user_n", "recent_mean"],
    ),  # fmt: skip
]


def _numbers(data: Path) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    from compression.data.movielens import load_raw
    from compression.data.render import history_before

    meta = read_meta(data)
    source = meta.get("source_folder")
    raw = load_raw(source if source and Path(source).is_dir() else None,
                   meta["config"].get("max_users"))  # fmt: skip
    recent_n = int(meta["config"]["history"])
    rows = {s: read_split(data, s) for s in SPLITS}
    rating = {(u, r.item): r.rating for u, rs in raw.ratings.items() for r in rs}
    by_item: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows["train"]:
        by_item[r["item_id"]].append((r["ts"], rating[(r["user_id"], r["item_id"])]))
    for v in by_item.values():
        v.sort()
    item_times = {item: [t for t, _ in v] for item, v in by_item.items()}

    def share(xs) -> float:
        return float(np.mean([x >= 4 for x in xs])) if len(xs) else np.nan

    def mean(xs) -> float:
        return float(np.mean(xs)) if len(xs) else np.nan

    out = {}
    for split, rs in rows.items():
        cols: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            seen = by_item.get(r["item_id"], [])
            n = bisect_left(item_times.get(r["item_id"], []), r["cutoff"])
            item = [x for _, x in seen[:n]]
            hist = history_before(raw.ratings[r["user_id"]], r["cutoff"])
            genres = set(raw.movies[r["item_id"]].genres)
            mine = [h.rating for h in hist if genres & set(raw.movies[h.item].genres)]
            past = [h.rating for h in hist]
            for name, xs in (("item", item), ("genre", mine), ("user", past)):
                cols[f"{name}_share"].append(share(xs))
                cols[f"{name}_share10"].append(round(share(xs) * 10) / 10 if xs else np.nan)
                cols[f"{name}_mean"].append(mean(xs))
                cols[f"{name}_n"].append(len(xs))
            cols["recent_mean"].append(mean(past[-recent_n:]))
        out[split] = ({k: np.array(v) for k, v in cols.items()},
                      np.array([r["label"] for r in rs]))  # fmt: skip
    return out


def numbers(data: Path) -> dict:
    import lightgbm as lgb

    d = _numbers(data)
    result = {}
    for name, cols in FEATURE_SETS:

        def x(split, cols=cols):
            return np.column_stack([d[split][0][c] for c in cols])

        model = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.03, num_leaves=15,
                                   n_jobs=1, verbose=-1, random_state=0)  # fmt: skip
        model.fit(x("train"), d["train"][1])
        result[name] = {
            "features": cols,
            **{
                s: round(roc_auc(d[s][1], model.predict_proba(x(s))[:, 1]), 4)
                for s in ("validation", "test")
            },  # fmt: skip
        }
        print(f"{name:<28} validation {result[name]['validation']:.4f}  "
              f"test {result[name]['test']:.4f}")  # fmt: skip
    return {"data": str(data), "model": "LightGBM, 300 trees, 15 leaves", "sets": result}


def ensemble(runs: list[Path], with_baseline: bool = False) -> dict:
    from ranking.evaluation import evaluate_checkpoint

    scores, keys, labels, queries = {}, None, None, None
    for run in runs:
        _, s, _ = evaluate_checkpoint(run / "teacher", run / "data", "test", bootstrap=0,
                                      progress=True)  # fmt: skip
        rows = read_split(run / "data", "test")
        k = [(r["query_id"], r["item_id"]) for r in rows]
        scores[run.name] = dict(zip(k, s, strict=True))
        if keys is None:
            keys, labels = k, np.array([r["label"] for r in rows])
            queries = np.unique([r["query_id"] for r in rows], return_inverse=True)[1]
        elif set(k) != set(keys):
            raise SystemExit(f"{run}: its test rows are not the first run's")

    def logit(name: str) -> np.ndarray:
        p = np.clip([scores[name][k] for k in keys], 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    corr = {}
    if with_baseline:
        from compression.baseline import split_predictions

        teachers = list(scores)
        # in the first run's file order, as ``keys``
        p = split_predictions(runs[0] / "data", "test")
        scores["lightgbm"] = dict(zip(keys, p, strict=True))
        for name in teachers:
            corr[name] = round(float(np.corrcoef(logit(name), logit("lightgbm"))[0, 1]), 4)
            print(f"{name}: correlation with lightgbm {corr[name]:.4f}")
    out = {}
    names = list(scores)
    for n in range(1, len(names) + 1):
        for combo in itertools.combinations(names, n):
            z = np.mean([logit(c) for c in combo], axis=0)
            auc, lo, hi = bootstrap_auc(labels, z, queries, n=1000)
            out[" + ".join(combo)] = {"auc": round(auc, 4), "auc_lo": round(lo, 4),
                                      "auc_hi": round(hi, 4)}  # fmt: skip
            print(f"{' + '.join(combo):<50} {auc:.4f} [{lo:.4f}, {hi:.4f}]")
    return {"runs": [str(r) for r in runs], "test_rows": len(keys), "averages": out,
            "correlation_with_lightgbm": corr}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("numbers", help="LightGBM on the hints' numbers alone")
    n.add_argument("--data", type=Path, required=True, help="a data movielens folder")
    n.add_argument("--json", type=Path)
    e = sub.add_parser("ensemble", help="teachers and the averages of their logits")
    e.add_argument("--run", type=Path, action="append", required=True,
                   help="a folder holding data/ and teacher/ (repeat)")  # fmt: skip
    e.add_argument(
        "--with-baseline",
        action="store_true",
        help="add the LightGBM baseline as a member (trained on the first run's data)",
    )
    e.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = numbers(args.data) if args.cmd == "numbers" else ensemble(args.run, args.with_baseline)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
