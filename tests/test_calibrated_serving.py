"""A calibrated checkpoint from the ``calibrate`` stage to a real server: the stage fits on the
validation split and writes the calibrator beside the task file, the evaluation applies it, the
server answers ``score`` calibrated and ``score_raw`` raw, ranked by the raw score, counts the
scores for drift against the reference the report stored, and refuses a calibrator fitted for
other weights."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
import yaml

from compression import pipeline
from compression.recipe import load_recipe
from ranking.evaluation import evaluate_checkpoint
from ranking.manifest import verify_manifest, write_manifest
from ranking.score_calibration import CALIBRATOR_FILE, CalibrationError, load_calibrator
from ranking.score_drift import REFERENCE_FILE, load_reference
from tests.serving import ServerProcess, metric_value
from tests.test_server import ITEMS, QUERY

pytestmark = pytest.mark.slow  # servers, subprocesses, the tiny recipe

ADMIN = "calibration-admin-key"


def recipe(tiny_demo, tmp, stages: list[dict]):
    teacher = tmp / "teacher"
    if not teacher.exists():  # the report writes a score reference into the teacher's folder
        shutil.copytree(tiny_demo / "teacher", teacher)
    path = tmp / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "teacher": str(teacher),
                "data": str(tiny_demo / "data"),
                "output": str(tmp / "out"),
                "evaluation": {"split": "test", "throughput": False},
                "stages": stages,
            }
        )
    )
    return load_recipe(path)


@pytest.fixture(scope="module")
def calibrated(tiny_demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibrate")
    r = recipe(tiny_demo, tmp, [{"name": "calibrated", "type": "calibrate", "method": "platt"}])
    report = pipeline.run_recipe(r)["report"]
    return r, report


def test_the_stage_writes_a_bound_calibrator_the_evaluation_applies(calibrated, tiny_demo):
    r, report = calibrated
    out, teacher = r.output / "calibrated", r.teacher
    verify_manifest(out)  # the manifest covers the calibrator
    cal = load_calibrator(out)
    assert cal.method == "platt" and cal.fitted_on["split"] == "validation"
    # Platt maximises the likelihood over a family holding the identity: never worse in-sample
    assert cal.fitted_on["logloss"] <= cal.fitted_on["logloss_raw"] + 1e-9
    assert (out / "model.safetensors").stat().st_ino == (
        teacher / "model.safetensors"
    ).stat().st_ino
    metrics, scores, _ = evaluate_checkpoint(out, tiny_demo / "data", "test", bootstrap=0)
    _, raw, _ = evaluate_checkpoint(teacher, tiny_demo / "data", "test", bootstrap=0)
    assert metrics["calibrator"] == "platt"
    np.testing.assert_allclose(scores, cal.apply(raw), atol=1e-6)
    rows = {x["name"]: x for x in report["stages"]}
    assert rows["calibrated"]["auc"] == pytest.approx(rows["teacher"]["auc"], abs=1e-9)
    assert rows["calibrated"]["calibrator"] == "platt"
    # each checkpoint's score reference: the test split's (calibrated) scores, bound to it
    assert load_reference(out).sum() == len(raw) == load_reference(teacher).sum()
    ref, raw_ref = load_reference(out), load_reference(teacher)
    assert not np.array_equal(ref, raw_ref)  # the served scores, i.e. calibrated


def test_isotonic_is_refused_on_a_small_validation_split(tiny_demo, tmp_path):
    r = recipe(tiny_demo, tmp_path, [{"name": "iso", "type": "calibrate", "method": "isotonic"}])
    with pytest.raises(CalibrationError, match="needs at least 1000 pairs, the validation"):
        pipeline.run_recipe(r, report=False)
    assert not (r.output / "iso").exists()  # a failed stage leaves nothing


@pytest.fixture(scope="module")
def server(calibrated, tmp_path_factory):
    r, _ = calibrated
    with ServerProcess(
        r.output / "calibrated",
        "torch",
        tmp_path_factory.mktemp("logs"),
        env={"SLIMRANK_ADMIN_API_KEY": ADMIN, "SLIMRANK_DRIFT_MIN_SCORES": "1"},
        max_expected_latency_ms=60_000,
    ) as s:
        yield s


def test_the_server_answers_calibrated_scores_ranked_by_the_raw_ones(calibrated, server):
    r, _ = calibrated
    cal = load_calibrator(r.output / "calibrated")
    got = httpx.post(server.url + "/v1/rank", json={"query": QUERY, "items": ITEMS}, timeout=30)
    assert got.status_code == 200, got.text
    results = got.json()["results"]
    raw = np.array([x["score_raw"] for x in results])
    np.testing.assert_allclose([x["score"] for x in results], cal.apply(raw), atol=1e-6)
    assert (np.diff(raw) <= 0).all()  # best first
    rerank = httpx.post(
        server.url + "/v1/rerank", json={"query": QUERY, "documents": ITEMS}, timeout=30
    ).json()["results"]
    by_index = {x["index"]: x["score"] for x in results}
    assert [x["index"] for x in rerank] == [x["index"] for x in results]
    for x in rerank:
        assert x["relevance_score"] == pytest.approx(by_index[x["index"]], abs=1e-6)
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert card["calibrator"] == "platt" and card["score_reference"] is True
    text = httpx.get(server.url + "/metrics").text
    lv = 'model="calibrated"'
    assert metric_value(text, "slimrank_score_count", lv) == 2 * len(ITEMS)
    assert metric_value(text, "slimrank_score_bucket", lv + ',le="+Inf"') == 2 * len(ITEMS)
    assert np.isfinite(metric_value(text, "slimrank_score_psi", lv))


def test_a_calibrator_of_other_weights_is_refused_at_load(calibrated, server, tmp_path):
    r, _ = calibrated
    other = tmp_path / "other"
    shutil.copytree(r.teacher, other)
    # other weights: the teacher's with one byte of the config changed
    cfg = other / "config.json"
    cfg.write_text(cfg.read_text().replace("{", "{ ", 1))
    shutil.copy(r.output / "calibrated" / CALIBRATOR_FILE, other / CALIBRATOR_FILE)
    (other / REFERENCE_FILE).unlink(missing_ok=True)
    write_manifest(other)  # a consistent folder: only the calibrator's binding is wrong
    got = httpx.post(
        server.url + "/admin/models",
        json={"name": "other", "version": "1", "path": str(other), "engine": "torch"},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert got.status_code == 422, got.text
    msg = got.json()["error"]["message"]
    assert "score_calibrator.json was fitted for other weights (config.json" in msg
