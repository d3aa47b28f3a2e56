"""The non-LLM baseline beats chance on small folders; the bootstrap AUC interval is honest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compression.data.movielens import MovieLensConfig, build_movielens
from ranking.bootstrap import bootstrap_auc
from ranking.metrics import roc_auc
from tests.ml_mini import write_mini_movielens


def _scored(n_queries: int, seed: int = 0, items: int = 10):
    rng = np.random.default_rng(seed)
    q = np.repeat(np.arange(n_queries), items)
    y = (rng.random(len(q)) < 0.5).astype(float)
    s = np.round(0.6 * y + rng.random(len(q)), 2)  # rounded: tied scores too
    return y, s, q


def test_bootstrap_contains_the_estimate_and_narrows_with_more_queries():
    widths = []
    for n_queries in (50, 800):
        y, s, q = _scored(n_queries)
        auc, lo, hi = bootstrap_auc(y, s, q, n=400)
        assert auc == pytest.approx(roc_auc(y, s))
        assert lo < auc < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # 16x the queries: about a quarter of the width


def test_bootstrap_is_seeded_and_resamples_queries_not_rows():
    y, s, q = _scored(200)
    assert bootstrap_auc(y, s, q, n=200, seed=3) == bootstrap_auc(y, s, q, n=200, seed=3)
    # one query per row (independent rows) vs rows in 10 perfectly correlated copies per query:
    # resampling queries sees that the copies carry no new information
    _, lo1, hi1 = bootstrap_auc(y, s, np.arange(len(y)), n=300)
    yy, ss = np.repeat(y[:200], 10), np.repeat(s[:200], 10)
    _, lo2, hi2 = bootstrap_auc(yy, ss, np.repeat(np.arange(200), 10), n=300)
    assert hi2 - lo2 > 2 * (hi1 - lo1)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_auc([0, 1], [0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        bootstrap_auc([0, 0.5], [0.1, 0.2], [0, 1])


@pytest.fixture(scope="module")
def mini_folder(tmp_path_factory):
    source = write_mini_movielens(tmp_path_factory.mktemp("src"), n_users=150, per_user=30)
    out = tmp_path_factory.mktemp("data")
    cfg = MovieLensConfig(history=5, items_per_query=5, min_history=3, val_share=0.15,
                          test_share=0.2, vocab_size=300)  # fmt: skip
    build_movielens(out, cfg, source=source)
    return out


def test_baseline_beats_chance_on_a_small_movielens_folder(mini_folder):
    from compression.baseline import run_baseline

    r = run_baseline(mini_folder, bootstrap=200)
    assert r["feature_sets"] == ["ContractFeatures", "MovieLensFeatures"]
    assert r["test"]["rows"] > 200
    assert r["test"]["auc_lo"] <= r["test"]["auc"] <= r["test"]["auc_hi"]
    assert r["test"]["auc"] > 0.6, r["test"]


def test_baseline_on_any_contract_folder(tmp_path, capsys):
    """Without MovieLens columns the contract features alone still learn (synthetic data)."""
    from compression.__main__ import main
    from ranking.synthetic import BenchmarkConfig, write_benchmark

    write_benchmark(BenchmarkConfig(train_queries=600, val_queries=80, test_queries=120), tmp_path)
    out = tmp_path / "baseline.json"
    assert main(["baseline", "--data", str(tmp_path), "--json", str(out), "--bootstrap",
                 "100"]) == 0  # fmt: skip
    r = json.loads(out.read_text())
    assert r["feature_sets"] == ["ContractFeatures"]
    assert r["test"]["auc"] > 0.55
    assert "test" in capsys.readouterr().out


def test_train_predictions_are_out_of_fold(mini_folder, tmp_path):
    """Each train row's probability comes from trees that never saw its label: flipping the
    label leaves the row's own prediction exactly as it was."""
    import shutil

    from compression.baseline import train_predictions

    p, info = train_predictions(mini_folder)
    rows = [json.loads(line) for line in (mini_folder / "train.jsonl").read_text().splitlines()]
    assert p.shape == (len(rows),) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    assert info["folds"] == 5 and len(info["trees"]) == 5
    assert info["train_auc_out_of_fold"] > 0.6, info

    flipped = tmp_path / "flipped"
    shutil.copytree(mini_folder, flipped)
    rows[7]["label"] = 1 - rows[7]["label"]
    (flipped / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    q, _ = train_predictions(flipped)
    assert q[7] == p[7]
