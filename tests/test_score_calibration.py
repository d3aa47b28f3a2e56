"""Score calibrators (``ranking.score_calibration``): what they fit, what they refuse, and that a
calibrator is bound to the weights it was fitted for."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ranking.errors import CheckpointError
from ranking.manifest import verify_manifest, write_manifest
from ranking.metrics import expected_calibration_error, roc_auc
from ranking.score_calibration import (
    CALIBRATOR_FILE,
    MIN_ISOTONIC_PAIRS,
    CalibrationError,
    fit,
    fit_platt,
    load_calibrator,
    save_calibrator,
)


def overconfident(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, raw scores, true probabilities): the raw scores are the true log-odds scaled
    by 2.5 and shifted, as a model that learned the ranking but not the probabilities."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.2, n)
    p = 1 / (1 + np.exp(-z))
    y = (rng.random(n) < p).astype(np.float64)
    raw = 1 / (1 + np.exp(-(2.5 * z + 0.8)))
    return y, raw, p


def test_platt_recovers_the_distortion_and_keeps_the_ranking():
    y, raw, p = overconfident(40_000)
    a, b = fit_platt(y, raw)
    # raw logit = 2.5 z + 0.8, so the inverse map is z = (logit - 0.8) / 2.5
    assert a == pytest.approx(1 / 2.5, rel=0.05) and b == pytest.approx(-0.8 / 2.5, abs=0.05)
    cal = fit("platt", y, raw)
    out = cal.apply(raw)
    assert expected_calibration_error(p, out) < 0.01 < expected_calibration_error(p, raw)
    assert roc_auc(y, out) == roc_auc(y, raw)  # strictly increasing: the AUC is unchanged
    assert cal.fitted_on["ece"] < cal.fitted_on["ece_raw"]


def test_isotonic_is_monotone_and_ties_only_beyond_its_outer_knots():
    y, raw, p = overconfident(20_000, seed=1)
    cal = fit("isotonic", y, raw)
    x, k = np.asarray(cal.params["x"]), np.asarray(cal.params["y"])
    assert (np.diff(x) > 0).all() and (np.diff(k) > 0).all()  # strictly rising knots
    test_y, test_raw, test_p = overconfident(20_000, seed=2)
    out = cal.apply(test_raw)
    order = np.argsort(test_raw)
    assert (np.diff(out[order]) >= 0).all()
    inside = (test_raw > x[0]) & (test_raw < x[-1])
    assert len(np.unique(out[inside])) == len(np.unique(test_raw[inside]))  # no ties inside
    assert expected_calibration_error(test_p, out) < expected_calibration_error(test_p, test_raw)
    assert abs(roc_auc(test_y, out) - roc_auc(test_y, test_raw)) < 1e-3  # the end ties only


def test_refusals_name_the_problem():
    y, raw, _ = overconfident(MIN_ISOTONIC_PAIRS - 1)
    with pytest.raises(CalibrationError, match=r"isotonic regression needs at least 1000 pairs"):
        fit("isotonic", y, raw)
    fit("platt", y, raw)  # two parameters: fine on a small split
    with pytest.raises(CalibrationError, match="unknown calibration method 'beta'"):
        fit("beta", y, raw)
    with pytest.raises(CalibrationError, match="hold both classes"):
        fit("platt", np.ones_like(raw), raw)
    with pytest.raises(CalibrationError, match="scores fall as the label rises"):
        fit("platt", y, 1 - raw)


def test_a_calibrator_is_refused_beside_other_weights(tmp_path):
    y, raw, _ = overconfident(2000)
    a, b = tmp_path / "a", tmp_path / "b"
    for d, content in ((a, b"weights of a"), (b, b"weights of b")):
        d.mkdir()
        (d / "model.safetensors").write_bytes(content)
        (d / "config.json").write_text("{}")
    save_calibrator(fit("platt", y, raw), a)
    write_manifest(a)  # the manifest covers the calibrator too
    cal = load_calibrator(a)
    assert cal.method == "platt" and set(cal.weights) == {"model.safetensors", "config.json"}
    assert load_calibrator(b) is None  # no calibrator: raw scores, no error

    shutil.copy(a / CALIBRATOR_FILE, b / CALIBRATOR_FILE)  # copied beside other weights
    with pytest.raises(CheckpointError, match=r"fitted for other weights \(model.safetensors"):
        load_calibrator(b)

    body = json.loads((a / CALIBRATOR_FILE).read_text())
    body["params"]["b"] += 1.0  # edited after the manifest was written
    (a / CALIBRATOR_FILE).write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match=f"{CALIBRATOR_FILE} is (corrupted|truncated)"):
        verify_manifest(a)
    (a / CALIBRATOR_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_calibrator(a)
