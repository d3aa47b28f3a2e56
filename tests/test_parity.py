"""Engine x format parity: every format llmcompressor writes scores alike in every engine that
can run it.

           bf16        fp8                      int8 (W8A8)   int4 (W4A16)
  torch    reference   vs bf16                  vs bf16       vs bf16
  vllm     vs torch    vs torch on a CUDA GPU;  vs torch      vs torch
                       on CPU refused at start

The torch column is the torch engine's scorer in this process (``load_checkpoint`` +
``TorchScorer``, what ``server.engines.torch_engine`` runs); the vllm column is the real server
with ``--engine vllm``, started once per format (and once more for bf16 with the classifier
scoring mode), over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from ranking.checkpoint import inspect_checkpoint, load_checkpoint
from ranking.dataset import requests_from_split
from ranking.scorer import TorchScorer
from ranking.support import Machine, unsupported_reason
from tests.serving import REPO, ServerProcess

pytestmark = pytest.mark.slow

QUANTIZED = ("fp8", "int8", "int4")
# Quantized against bf16 in the same engine: the weights (and for FP8/INT8 the activations)
# are rounded. Probabilities.
QUANT_TOL = 0.05
# vLLM against the torch engine on the same checkpoint: vLLM computes in bf16 with its own
# kernels (and, for INT8, int8 activations); the torch engine dequantizes to bf16.
SCORE_TOL = 0.03


@pytest.fixture(scope="module")
def checkpoints(tiny_demo, tiny_quantized) -> dict:
    return {"bf16": tiny_demo / "teacher", **tiny_quantized}


@pytest.fixture(scope="module")
def requests(tiny_demo) -> list[tuple[str, list[str]]]:
    # items repeated so that a request has >= 10 of them: the top-10 order is checked
    return [
        (q, (items * 2)[:12]) for q, items in requests_from_split(tiny_demo / "data", "test", 3)
    ]


def torch_scores(path, requests, emulate_activation_quant: bool = True) -> list[np.ndarray]:
    model, tok, task, _ = load_checkpoint(path, emulate_activation_quant=emulate_activation_quant)
    scorer = TorchScorer(model, tok, task)
    return [scorer.score(q, items) for q, items in requests]


@pytest.fixture(scope="module")
def torch_engine(checkpoints, requests) -> dict[str, list[np.ndarray]]:
    """The torch column: scores per format, computed once for the module."""
    return {fmt: torch_scores(path, requests) for fmt, path in checkpoints.items()}


# ---- torch x {fp8, int8, int4} --------------------------------------------------------------
@pytest.mark.parametrize("fmt", QUANTIZED)
def test_torch_engine_scores_quantized_like_bf16(checkpoints, torch_engine, fmt):
    path = checkpoints[fmt]
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert "lm_head" in qc["ignore"]  # scoring reads two rows of lm_head: never quantized
    assert inspect_checkpoint(path).format == fmt
    for ref, got in zip(torch_engine["bf16"], torch_engine[fmt], strict=True):
        assert np.abs(ref - got).max() < QUANT_TOL, (fmt, ref, got)


@pytest.mark.parametrize("fmt", ["fp8", "int8"])
def test_torch_engine_activation_emulation_can_be_skipped(checkpoints, requests, torch_engine, fmt):
    """W8A8/FP8: per-token activation quantization is emulated by default (scores as with real
    kernels); skipping it turns the emulation off in every quantized module and only drops that
    rounding."""
    for emulate in (True, False):
        model, *_ = load_checkpoint(checkpoints[fmt], emulate_activation_quant=emulate)
        flags = {
            getattr(m, "quantization_enabled", True)
            for m in model.modules()
            if getattr(m, "quantization_scheme", None) is not None
        }
        assert flags == {emulate}, (emulate, flags)
    skipped = torch_scores(checkpoints[fmt], requests, emulate_activation_quant=False)
    for emulated, fast in zip(torch_engine[fmt], skipped, strict=True):
        assert np.abs(emulated - fast).max() < SCORE_TOL


# ---- vllm x {bf16, fp8, int8, int4} ---------------------------------------------------------
def rank_scores(url: str, query: str, items: list[str]) -> np.ndarray:
    r = httpx.post(url + "/v1/rank", json={"query": query, "items": items}, timeout=120)
    assert r.status_code == 200, r.text
    s = np.zeros(len(items))
    for x in r.json()["results"]:
        s[x["index"]] = x["score"]
    return s


def assert_not_ready_until_ready(url: str, timeout: float) -> None:
    """Poll until ready: every answer before is 'not ready' (503 with Retry-After, for /ready
    and for scoring alike), the first 200 is a ready model, and it stays ready. How many
    not-ready answers come depends on how much of the load the server answers through (the vLLM
    engine's start blocks the event loop), so none is required here."""
    deadline = time.monotonic() + timeout
    while True:
        assert httpx.get(url + "/health").status_code == 200
        ready = httpx.get(url + "/ready")
        if ready.status_code == 200:
            break
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"]["type"] == "not_ready" and "retry-after" in ready.headers
        r = httpx.post(url + "/v1/rank", json={"query": "q", "items": ["i"]})
        if r.status_code != 200:  # the model may become ready between the two requests
            assert r.status_code == 503 and "retry-after" in r.headers, r.text
        assert time.monotonic() < deadline, f"not ready after {timeout}s"
        time.sleep(0.2)
    assert ready.json()["status"] == "ready"
    assert httpx.get(url + "/ready").status_code == 200


def _vllm_refuses_here(fmt: str) -> str | None:
    """The support table's reason vLLM cannot run ``fmt`` on this machine (None: it can)."""
    return unsupported_reason("vllm", fmt, "LlamaForCausalLM", Machine.here())


VLLM_CELLS = [
    pytest.param(
        fmt,
        scoring,
        marks=pytest.mark.skipif(
            bool(_vllm_refuses_here(fmt)), reason=f"{_vllm_refuses_here(fmt)}"
        ),
    )
    for fmt, scoring in [
        ("bf16", "logprobs"),
        ("bf16", "classifier"),
        ("fp8", "logprobs"),
        ("int8", "logprobs"),
        ("int4", "logprobs"),
    ]
]
REFUSED_HERE = [f for f in ("fp8", "int8", "int4") if _vllm_refuses_here(f)]


@pytest.mark.parametrize("fmt, scoring", VLLM_CELLS)
def test_vllm_engine_scores_like_the_torch_engine(
    checkpoints, requests, torch_engine, tmp_path, fmt, scoring
):
    v = ServerProcess(checkpoints[fmt], "vllm", tmp_path, vllm_scoring=scoring)
    v.start(wait_ready=False)
    try:
        assert_not_ready_until_ready(v.url, timeout=300)
        card = httpx.get(v.url + "/v1/models").json()["data"][0]
        assert card["engine"] == "vllm" and card["format"] == fmt
        got = [rank_scores(v.url, q, items) for q, items in requests]
        metrics = httpx.get(v.url + "/metrics").text
    finally:
        v.stop()
    for a, b in zip(torch_engine[fmt], got, strict=True):
        assert np.abs(a - b).max() < SCORE_TOL, (fmt, a, b)
        # same top-10 order where scores are not near-ties
        top_a, top_b = np.argsort(-a, kind="stable")[:10], np.argsort(-b, kind="stable")[:10]
        for i, j in zip(top_a, top_b, strict=True):
            assert i == j or abs(a[i] - a[j]) < SCORE_TOL, (fmt, top_a, top_b)
    assert "slimrank_request_prefill_seconds_bucket" in metrics


@pytest.mark.parametrize("fmt", REFUSED_HERE or [pytest.param("none", marks=pytest.mark.skip(
    reason="vLLM runs every quantized format on this machine"))])  # fmt: skip
def test_vllm_engine_refuses_what_it_cannot_run_here_naming_the_torch_engine(checkpoints, fmt):
    """FP8 without a CUDA GPU, INT4 on an AVX2-only CPU: refused before the port opens (their
    first forward would hang or crash the engine)."""
    p = subprocess.run(
        [sys.executable, "-m", "server", "--model", str(checkpoints[fmt]),
         "--engine", "vllm", "--port", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2
    assert fmt.upper() in p.stderr and "--engine torch" in p.stderr
