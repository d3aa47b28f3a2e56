import json

import numpy as np
import pytest

from ranking.datafolder import read_split
from ranking.metrics import expected_auc, roc_auc
from ranking.synthetic import (
    BenchmarkConfig,
    World,
    bayes_auc,
    benchmark_config,
    effect_attribution,
    generate,
    read_meta,
    render_item,
    render_member,
    split_effects,
    write_benchmark,
)

SMALL = BenchmarkConfig(train_queries=200, val_queries=50, test_queries=80)


def test_deterministic_from_seed():
    a, b = generate(SMALL), generate(SMALL)
    assert a == b
    c = generate(BenchmarkConfig(**{**SMALL.__dict__, "seed": 1}))
    assert c["test"] != a["test"]


def test_splits_have_expected_shape_and_are_disjoint():
    sp = generate(SMALL)
    assert len(sp["train"]) == 200 * 16 and len(sp["test"]) == 80 * 10
    ids = [{r["query_id"] for r in rows} for rows in sp.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2])
    for r in sp["train"][:50]:
        assert r["label"] in (0, 1) and 0 < r["p"] < 1


def test_signal_is_in_the_text():
    """The true probability is a function of the rendered text alone: equal text, equal p."""
    w = World(SMALL)
    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(300):
        m = w.member(rng)
        for it in w.candidates(rng, m, 5):
            key = (render_member(m).split(" recently")[0], render_item(it).split(": ", 1)[1])
            p = w.probability(m, it)
            assert seen.setdefault(key, p) == p


def test_bayes_auc_is_the_ceiling_and_labels_follow_p():
    rows = generate(BenchmarkConfig(train_queries=2000, val_queries=10, test_queries=10))["train"]
    p = np.array([r["p"] for r in rows])
    y = np.array([r["label"] for r in rows])
    bayes = bayes_auc(rows)
    assert 0.75 < bayes < 0.9
    # the sampled labels agree with the truth: empirical AUC of p is close to its expectation
    assert abs(roc_auc(y, p) - bayes) < 0.01
    assert abs(y.mean() - p.mean()) < 0.01
    # a noisy scorer is below the ceiling
    noisy = p + np.random.default_rng(0).normal(0, 0.2, len(p))
    assert expected_auc(p, noisy) < bayes


def test_write_and_read(tmp_path):
    meta = write_benchmark(SMALL, tmp_path)
    assert read_meta(tmp_path) == meta
    assert len(read_split(tmp_path, "validation")) == 500
    t = meta["splits"]["test"]
    assert 0.5 < t["main_effects_auc"] < t["bayes_auc"] < 1  # personalisation carries signal
    assert not list(tmp_path.glob("*.tmp"))


def test_effects_replay_the_written_rows():
    """The terms replayed from the seed are the rows' own: they add up to each row's p."""
    rows = generate(SMALL)["test"]
    x = split_effects(SMALL, "test")
    assert x.shape == (len(rows), 5)
    p = 1 / (1 + np.exp(-(SMALL.bias + x.sum(axis=1))))
    assert np.allclose(p, [r["p"] for r in rows], atol=1e-6)
    assert np.allclose(x[:, 0], [r["z_main"] for r in rows], atol=1e-6)


def test_effect_attribution_tells_what_a_scorer_learned():
    cfg = BenchmarkConfig(train_queries=10, val_queries=10, test_queries=600)
    rows = generate(cfg)["test"]
    truth = effect_attribution(cfg, "test", np.array([r["p"] for r in rows]))
    assert all(abs(e["weight"] - 1) < 1e-3 for e in truth.values())
    assert all(e["worth"] > 0 for e in truth.values())
    assert max(truth, key=lambda k: truth[k]["worth"]) == "main"
    main_only = np.array([1 / (1 + np.exp(-r["z_main"])) for r in rows])
    learned = effect_attribution(cfg, "test", main_only)
    assert abs(learned["main"]["weight"] - 1) < 1e-3
    assert all(abs(learned[k]["weight"]) < 1e-3 for k in ("interest", "format", "level", "latent"))
    with pytest.raises(ValueError, match="3 scores for the 6000 rows"):
        effect_attribution(cfg, "test", np.zeros(3))


def test_benchmark_config_only_for_this_generator(tmp_path):
    write_benchmark(SMALL, tmp_path)
    assert benchmark_config(tmp_path) == SMALL
    assert benchmark_config(tmp_path / "elsewhere") is None
    meta = read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "generator_version": -1}))
    assert benchmark_config(tmp_path) is None
