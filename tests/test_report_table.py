"""The report's table: every AUC with its bootstrap interval, and the non-LLM baseline's row
when the data folder holds a ``baseline.json`` scored on the same split content."""

from __future__ import annotations

import json

import numpy as np

from compression.report import baseline, markdown
from ranking.datafolder import split_path
from ranking.evaluation import quality_metrics
from ranking.fingerprint import content_hash
from ranking.request import EncodedRequest


def groups(n_queries: int, seed: int = 0) -> tuple[list[EncodedRequest], np.ndarray]:
    rng = np.random.default_rng(seed)
    out, scores = [], []
    for q in range(n_queries):
        labels = rng.integers(0, 2, size=8).astype(np.float32)
        out.append(EncodedRequest([1], [[2]] * 8, labels, np.full(8, np.nan), f"q{q}"))
        scores.append(labels + rng.normal(0, 1.0, size=8))
    return out, np.concatenate(scores)


def test_a_checkpoint_auc_gets_an_interval_resampling_queries():
    g, s = groups(60)
    m = quality_metrics(g, s, bootstrap=200)
    assert m["auc_lo"] < m["auc"] < m["auc_hi"]
    assert "auc_lo" not in quality_metrics(g, s)
    # fewer queries, wider interval
    g2, s2 = groups(15)
    m2 = quality_metrics(g2, s2, bootstrap=200)
    assert m2["auc_hi"] - m2["auc_lo"] > m["auc_hi"] - m["auc_lo"]


def write_data(folder, label: int = 1) -> None:
    folder.mkdir(exist_ok=True)
    for split in ("train", "validation", "test"):
        row = {"query_id": f"{split}-q", "query": "q", "item": "i", "label": label}
        (folder / f"{split}.jsonl").write_text(json.dumps(row) + "\n")


def stage_row(name: str, auc: float) -> dict:
    return {"name": name, "format": "bf16", "auc": auc, "auc_lo": auc - 0.01,
            "auc_hi": auc + 0.01, "auc_delta": 0.0, "logloss": 0.6, "params": 1e7,
            "bytes": 2e7, "bytes_ratio": 1.0, "ablation": False}  # fmt: skip


def report_with(base: dict | None) -> dict:
    return {"split": "test", "bayes_auc": None, "baseline": base,
            "stages": [stage_row("teacher", 0.78)], "checks": {}, "ablations": [],
            "generative": []}  # fmt: skip


def test_the_baseline_row_shows_when_scored_on_the_same_split(tmp_path):
    data = tmp_path / "data"
    write_data(data)
    assert baseline(data, "test", 0.78) is None  # no baseline.json: no row
    result = {
        "model": "lightgbm",
        "data_hash": {"test": content_hash(split_path(data, "test"))},
        "test": {"auc": 0.7592, "auc_lo": 0.7467, "auc_hi": 0.7721, "logloss": 0.61},
    }
    (data / "baseline.json").write_text(json.dumps(result))
    b = baseline(data, "test", 0.78)
    assert not b["stale"] and abs(b["auc_delta_vs_teacher"] - (0.7592 - 0.78)) < 1e-9
    table = markdown(report_with(b))
    assert "| baseline (lightgbm) | - | 0.7592 [0.7467, 0.7721] | -0.0208 |" in table
    assert "| teacher | bf16 | 0.7800 [0.7700, 0.7900] |" in table

    write_data(data, label=0)  # the test split rebuilt: the old baseline is not compared
    b = baseline(data, "test", 0.78)
    assert b["stale"]
    table = markdown(report_with(b))
    assert "| baseline" not in table and "scored on other test data" in table
