"""Batch scoring (``python -m server.batch``) end to end on the tiny demo: the server's scores
for the same pairs, a calibrator applied as the server applies it, a SIGKILL part-way and a
resume that ends with the uninterrupted run's output, identity checks, shards whose union
covers the input exactly once, and bad input named or written as a row error."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow.dataset as ds
import pytest

from ranking.datafolder import read_split
from ranking.dataset import group_by_query, labels_in_group_order
from ranking.manifest import write_manifest
from ranking.score_calibration import fit, load_calibrator, save_calibrator
from server.batch.parts import MANIFEST
from tests.serving import REPO, ServerProcess

pytestmark = pytest.mark.slow  # a server and batch subprocesses per test

TOL = 1e-4  # the same engine and kernel, other batch compositions (fp32 on this CPU)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def batch(*args: str, check: bool = True) -> Ran:
    """``python -m server.batch ARGS`` in this process (the SIGKILL test runs a real process)."""
    from server.batch.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--no-progress"])
    r = Ran(code, out.getvalue(), err.getvalue())
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def table(folder: Path):
    return ds.dataset(folder, format="parquet").to_table().sort_by("row")


@pytest.fixture(scope="module")
def calibrated(tiny_demo, tmp_path_factory) -> Path:
    """The tiny teacher with a Platt calibrator fitted on its validation scores."""
    from ranking.evaluation import evaluate_checkpoint

    model = tmp_path_factory.mktemp("batch") / "teacher"
    shutil.copytree(tiny_demo / "teacher", model)
    _, raw, _ = evaluate_checkpoint(model, tiny_demo / "data", "validation", bootstrap=0)
    labels = labels_in_group_order(read_split(tiny_demo / "data", "validation"))
    save_calibrator(fit("platt", labels, raw), model)
    write_manifest(model)
    return model


@pytest.fixture(scope="module")
def scored(calibrated, tiny_demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batch-out") / "full"
    batch("--model", str(calibrated), "--data", str(tiny_demo / "data"), "--split", "test",
          "--output", str(out), "--rows-per-part", "100")  # fmt: skip
    return out


def test_scores_equal_the_servers_and_are_calibrated(calibrated, scored, tiny_demo):
    t = table(scored)
    rows = read_split(tiny_demo / "data", "test")
    assert t.num_rows == len(rows) and t["row"].to_pylist() == list(range(len(rows)))
    assert t.column_names == ["query_id", "item_id", "label", "p", "z_main", "row", "score",
                              "score_raw", "error"]  # fmt: skip
    cal = load_calibrator(calibrated)
    raw = t["score_raw"].to_numpy()
    np.testing.assert_allclose(t["score"].to_numpy(), cal.apply(raw), atol=1e-12)
    body = json.loads((scored / MANIFEST).read_text())
    assert body["complete"] and body["totals"]["errors"] == 0 and body["totals"]["calibrator"]
    # the server on the same checkpoint, one request per query
    served = np.full(len(rows), np.nan)
    with ServerProcess(
        calibrated, "torch", scored.parent / "logs", max_expected_latency_ms=60000
    ) as srv:
        start = 0
        for _, group in group_by_query(rows):
            r = httpx.post(
                srv.url + "/v1/rank",
                timeout=60,
                json={"query": group[0]["query"], "items": [x["item"] for x in group]},
            )
            assert r.status_code == 200, r.text
            for x in r.json()["results"]:
                served[start + x["index"]] = x["score"]
            start += len(group)
    diff = float(np.abs(t["score"].to_numpy() - served).max())
    print(f"max |batch - server| = {diff:.2e}")
    assert diff < TOL


def test_a_killed_run_resumes_to_the_same_output(calibrated, tiny_demo, tmp_path):
    common = ["--model", str(calibrated), "--data", str(tiny_demo / "data"),
              "--rows-per-part", "20"]  # fmt: skip
    batch(*common, "--output", str(tmp_path / "whole"))
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "server.batch", *common, "--output", str(out), "--no-progress"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            mf = out / MANIFEST
            if mf.is_file() and len(json.loads(mf.read_text())["parts"]) >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    body = json.loads((out / MANIFEST).read_text())
    assert not body["complete"] and 2 <= len(body["parts"]) < 30
    totals = json.loads(batch(*common, "--output", str(out)).stdout)  # the same command
    assert totals["resumed_rows"] >= 40 and totals["rows"] == 600 and totals["parts"] == 30
    assert table(out).equals(table(tmp_path / "whole"))


def test_another_model_or_input_is_refused_unless_restarted(scored, tiny_demo, calibrated):
    r = batch("--model", str(tiny_demo / "teacher"), "--data", str(tiny_demo / "data"),
              "--output", str(scored), "--rows-per-part", "100", check=False)  # fmt: skip
    assert r.returncode == 2 and "differs in model" in r.stderr and "--restart" in r.stderr
    r = batch("--model", str(calibrated), "--data", str(tiny_demo / "data"), "--split",
              "validation", "--output", str(scored), "--rows-per-part", "100", check=False)  # fmt: skip
    assert r.returncode == 2 and "differs in input" in r.stderr


def test_shards_cover_the_input_exactly_once(calibrated, scored, tiny_demo, tmp_path):
    out = tmp_path / "sharded"
    common = ["--model", str(calibrated), "--data", str(tiny_demo / "data"), "--output", str(out)]
    for i in range(3):
        batch(*common, "--shard", f"{i}/3", "--rows-per-part", "100")
    check = batch("check", "--data", str(tiny_demo / "data"), "--output", str(out))
    assert json.loads(check.stdout) == {"shards": 3, "rows": 600}
    union, whole = ds.dataset(out, format="parquet").to_table().sort_by("row"), table(scored)
    keys = [c for c in whole.column_names if not c.startswith("score")]
    assert union.select(keys).equals(whole.select(keys))
    # other batch compositions: the fp32 sums round differently in the last bits
    np.testing.assert_allclose(union["score"].to_numpy(), whole["score"].to_numpy(), atol=TOL)
    queries = [set(table(p)["query_id"].to_pylist()) for p in sorted(out.glob("shard-*"))]
    assert all(q and not (q & o) for q in queries for o in queries if o is not q)
    shutil.rmtree(out / "shard-0001-of-0003")
    r = batch("check", "--data", str(tiny_demo / "data"), "--output", str(out), check=False)
    assert r.returncode == 2 and "shards [0, 2] of [3]" in r.stderr


def test_bad_rows_are_named_and_long_ones_kept_with_an_error(calibrated, tmp_path):
    good = {"query_id": "q1", "query": "member profile: nurse.", "item": "jazz guitar video."}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        good, {**good, "item": "jazz " * 400, "item_id": 7}, {**good, "extra": "kept"}
    ]) + "\n")  # fmt: skip
    r = batch("--model", str(calibrated), "--input", str(path), "--output", str(tmp_path / "o"))
    t = table(tmp_path / "o")
    assert t["error"].to_pylist()[0] is None and "max_item_tokens=256" in t["error"][1].as_py()
    assert np.isnan(t["score"].to_numpy(zero_copy_only=False)[1]) or t["score"][1].as_py() is None
    assert t["extra"].to_pylist() == [None, None, "kept"]
    assert json.loads(r.stdout)["errors"] == 1
    path.write_text(json.dumps({"query_id": "q1", "query": "x"}) + "\n")
    r = batch("--model", str(calibrated), "--input", str(path), "--output", str(tmp_path / "p"),
              check=False)  # fmt: skip
    assert r.returncode == 2 and "pairs.jsonl line 1: field 'item': missing" in r.stderr


def test_vllm_batch_format_answers_every_line_in_order(calibrated, tmp_path):
    """vLLM's run-batch shape: each line answered through the server's own app, in order; a
    bad line gets its own error or 4xx and the run goes on."""
    lines = [
        {"custom_id": "rank", "method": "POST", "url": "/v1/rank",
         "body": {"query": "member profile: nurse.", "items": ["jazz video.", "stocks article."]}},
        {"custom_id": "rerank", "method": "POST", "url": "/v1/rerank",
         "body": {"query": "member profile: nurse.", "documents": ["jazz video."]}},
        {"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions", "body": {}},
        {"custom_id": "empty", "method": "POST", "url": "/v1/rank",
         "body": {"query": "q", "items": []}},
    ]  # fmt: skip
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{not json\n")
    out = tmp_path / "results.jsonl"
    r = batch("--model", str(calibrated), "--input", str(path), "--output", str(out))
    assert json.loads(r.stdout)["lines"] == 5
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["custom_id"] for g in got] == ["rank", "rerank", "chat", "empty", None]
    rank = got[0]["response"]
    assert rank["status_code"] == 200 and rank["request_id"] == "batch-1"
    cal = load_calibrator(calibrated)
    for x in rank["body"]["results"]:
        assert x["score"] == pytest.approx(float(cal.apply(np.array([x["score_raw"]]))[0]))
    assert got[1]["response"]["body"]["results"][0]["relevance_score"] > 0
    assert got[2]["response"] is None and "/v1/chat/completions" in got[2]["error"]["message"]
    assert got[3]["response"]["status_code"] == 422 and got[3]["error"] is None
    assert "not a batch request" in got[4]["error"]["message"]
