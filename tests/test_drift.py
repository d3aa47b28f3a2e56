"""Score drift: the PSI, the server's sliding window, the exported series, and the reference
bound to its checkpoint's weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ranking.errors import CheckpointError
from ranking.score_drift import (
    PSI_PAGE,
    PSI_WARN,
    REFERENCE_FILE,
    histogram,
    load_reference,
    psi,
    save_reference,
)
from server.drift import ScoreCollector, ScoreDrift
from tests.serving import metric_value


def scores(n: int, a: float = 2.0, b: float = 5.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).beta(a, b, n)


def test_psi_reads_as_the_usual_thresholds():
    ref = histogram(scores(20_000))
    assert psi(ref, ref) == 0.0
    assert psi(ref, histogram(scores(2_000, seed=1))) < PSI_WARN  # another sample: noise only
    assert psi(ref, histogram(scores(2_000, a=2.6, seed=2))) > PSI_WARN  # a moderate shift
    assert psi(ref, histogram(scores(2_000, a=5.0, b=2.0, seed=3))) > PSI_PAGE  # another population
    assert np.isnan(psi(ref, np.zeros_like(ref)))
    # an empty reference bin counts as rare, not impossible: finite
    one_sided = np.zeros_like(ref)
    one_sided[-1] = 100
    assert np.isfinite(psi(ref, one_sided))


def test_the_window_slides_and_needs_enough_scores():
    now = [0.0]
    d = ScoreDrift(window_s=100.0, min_scores=500, clock=lambda: now[0])
    d.reference = histogram(scores(20_000))
    d.observe(scores(400, seed=1))
    assert np.isnan(d.psi())  # 400 < 500 scores: too few to tell
    now[0] = 50.0
    d.observe(scores(400, seed=2))
    assert d.window().sum() == 800 and d.psi() < PSI_WARN
    now[0] = 120.0  # the first slice left the window, the second is still in
    d.observe(scores(400, a=5.0, b=2.0, seed=3))
    assert d.window().sum() == 800 and d.psi() > PSI_PAGE
    now[0] = 400.0  # everything left the window; the all-time histogram keeps it
    assert d.window().sum() == 0 and np.isnan(d.psi())
    assert d.total.sum() == 1200


def test_the_collector_exports_histogram_window_and_psi():
    d = ScoreDrift(window_s=300.0, min_scores=10)
    d.reference = histogram(scores(20_000))
    no_ref = ScoreDrift(window_s=300.0, min_scores=10)
    batch = np.array([0.01, 0.26, 0.26, 0.99, 1.0])
    d.observe(batch)
    no_ref.observe(batch)
    r = CollectorRegistry()
    r.register(ScoreCollector(lambda: [("ranker", "1", d), ("ranker", "2", no_ref)]))
    text = generate_latest(r).decode()
    lv = 'model="ranker",version="1"'
    assert metric_value(text, "slimrank_score_bucket", lv + ',le="0.05"') == 1
    assert metric_value(text, "slimrank_score_bucket", lv + ',le="0.3"') == 3
    assert metric_value(text, "slimrank_score_bucket", lv + ',le="+Inf"') == 5
    assert metric_value(text, "slimrank_score_sum", lv) == pytest.approx(batch.sum())
    assert metric_value(text, "slimrank_score_window_scores", lv) == 5
    assert np.isnan(metric_value(text, "slimrank_score_psi", lv))  # 5 < min_scores
    assert 'slimrank_score_psi{model="ranker",version="2"}' not in text  # no reference
    d.observe(np.full(20, 0.9))
    text = generate_latest(r).decode()
    assert metric_value(text, "slimrank_score_psi", lv) > PSI_PAGE


def test_a_reference_is_refused_beside_other_weights(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, content in ((a, b"a"), (b, b"b")):
        d.mkdir()
        (d / "model.safetensors").write_bytes(content)
    save_reference(a, scores(1000), "test")
    assert load_reference(a).sum() == 1000 and load_reference(b) is None
    shutil.copy(a / REFERENCE_FILE, b / REFERENCE_FILE)
    with pytest.raises(CheckpointError, match="computed for other weights"):
        load_reference(b)
