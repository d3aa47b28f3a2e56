"""The ranking server end to end: a real process, real HTTP, the real torch engine on the tiny
demo teacher. Endpoints, metrics and the graceful SIGTERM; the service's logic (limits, bad
input, admission, deadlines, disconnects, drain) is tested in-process in test_service.py."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from ranking.checkpoint import load_checkpoint
from ranking.scorer import TorchScorer
from tests.serving import ServerProcess, metric_value

# bf16 on both sides; batch composition (padding, chunking) changes bf16 rounding slightly
TOL = 0.01
QUERY = (
    "member profile: nurse, expert level. interests: music, travel, cooking. prefers video content."
)
ITEMS = [
    "jazz guitar: excellent expert music video.",
    "budget stocks: poor beginner finance article.",
    "island journey: good expert travel video.",
    "bread pasta: mediocre intermediate cooking course.",
]


@pytest.fixture(scope="module")
def server(tiny_demo, tmp_path_factory):
    with ServerProcess(
        tiny_demo / "teacher",
        "torch",
        tmp_path_factory.mktemp("logs"),
        max_items=64,
        max_query_tokens=200,
        max_body_bytes=65536,
        # a burst of 16 concurrent requests must all be admitted (batching is tested here,
        # admission by expected wait in test_scheduler.py and the chaos overload scenario)
        max_expected_latency_ms=60_000,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_demo):
    """Scores of the in-process scorer, same dtype as the server (bf16, as saved)."""
    model, tok, task, _ = load_checkpoint(tiny_demo / "teacher")
    return TorchScorer(model, tok, task).score(QUERY, ITEMS)


def post(server, path, payload, **kw):
    return httpx.post(server.url + path, json=payload, timeout=30, **kw)


# ---- the three dialects ---------------------------------------------------------------------------
def test_rank_sorted_with_usage(server, reference):
    r = post(server, "/v1/rank", {"query": QUERY, "items": ITEMS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == list(np.argsort(-reference, kind="stable"))
    got = {x["index"]: x["score"] for x in body["results"]}
    assert [got[i] for i in range(4)] == pytest.approx(reference, abs=TOL)
    u = body["usage"]
    assert u["items"] == 4 and u["prompt_tokens"] > u["computed_tokens"] > 0
    assert body["model"] == "teacher"
    top = post(server, "/v1/rank", {"query": QUERY, "items": ITEMS, "top_k": 2}).json()["results"]
    assert top == body["results"][:2]


def test_score_sglang_compatible(server, reference):
    models = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert models["label_tokens"] == [" yes", " no"]
    r = post(server, "/v1/rank", {"query": QUERY, "items": ITEMS[:1]})
    assert r.status_code == 200
    # the label ids as the model's tokenizer has them, in either order
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server.args[server.args.index("--model") + 1])
    yes, no = tok.convert_tokens_to_ids(["Ġyes", "Ġno"])
    body = post(
        server,
        "/v1/score",
        {"query": QUERY, "items": ITEMS, "label_token_ids": [no, yes], "apply_softmax": True},
    ).json()
    scores = np.array(body["scores"])
    assert scores.shape == (4, 2)
    assert scores[:, 1] == pytest.approx(reference, abs=TOL)
    assert scores.sum(axis=1) == pytest.approx(np.ones(4))
    # SGLang's default, apply_softmax=false: probabilities over the whole vocabulary, whose
    # ratio over the two labels is the score
    default = np.array(post(server, "/v1/score", {"query": QUERY, "items": ITEMS}).json()["scores"])
    assert (default.sum(axis=1) < 1 + 1e-6).all()
    assert default[:, 0] / default.sum(axis=1) == pytest.approx(reference, abs=TOL)


def test_rerank_compatible(server, reference):
    r = post(
        server,
        "/v1/rerank",
        {
            "model": "teacher",
            "query": QUERY,
            "documents": ITEMS,
            "top_n": 3,
            "return_documents": True,
            "truncate_prompt_tokens": -1,  # what vLLM's benchmark client always sends
        },
    )
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 3
    assert [x["index"] for x in res] == list(np.argsort(-reference, kind="stable")[:3])
    assert res[0]["document"]["text"] == ITEMS[res[0]["index"]]
    assert r.json()["usage"]["prompt_tokens"] == r.json()["usage"]["total_tokens"] > 0


def test_info_endpoints(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").status_code == 200
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert card["id"] == "teacher:1" and card["name"] == "teacher" and card["state"] == "ready"
    assert card["format"] == "bf16" and card["engine"] == "torch" and card["memory_bytes"] > 0
    assert card["parameters"] > 0
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in (
        "/v1/rank",
        "/v1/score",
        "/v1/rerank",
        "/v1/models",
        "/health",
        "/ready",
        "/metrics",
    ):
        assert path in spec["paths"]


# ---- errors over real HTTP (every bad input case: test_service.py) ---------------------------------
def test_malformed_json_and_big_body_and_unknown_path(server):
    r = httpx.post(
        server.url + "/v1/rank",
        content=b'{"query": "x", "items": [',
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"
    r = post(server, "/v1/rank", {"query": "music " * 300, "items": ITEMS})  # real tokenizer
    assert r.status_code == 422 and "max_query_tokens=200" in r.json()["error"]["message"]
    r = post(server, "/v1/rank", {"query": QUERY, "items": ["x" * 1000] * 70})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
    r = httpx.get(server.url + "/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = httpx.get(server.url + "/v1/rank")
    assert r.status_code == 405


# ---- metrics after traffic ----------------------------------------------------------------------------
def test_metrics_after_traffic(server):
    before = httpx.get(server.url + "/metrics").text
    n0 = metric_value(before, "slimrank_items_scored_total")
    for _ in range(3):
        assert post(server, "/v1/rank", {"query": QUERY, "items": ITEMS}).status_code == 200
    post(server, "/v1/rank", {"query": QUERY, "items": []})
    text = httpx.get(server.url + "/metrics").text
    assert metric_value(text, "slimrank_items_scored_total") == n0 + 12
    assert metric_value(text, "slimrank_request_prefill_seconds_count") >= 3
    assert metric_value(text, "slimrank_batch_prefill_seconds_bucket", 'le="+Inf"') >= 3
    for name in (
        "slimrank_queue_wait_seconds_count",
        "slimrank_batch_size_items_count",
        "slimrank_prompt_tokens_total",
        "slimrank_computed_tokens_total",
        "slimrank_prefix_reused_tokens_total",
    ):
        assert metric_value(text, name) > 0, name
    assert metric_value(text, "slimrank_requests_total", 'endpoint="/v1/rank",status="200"') >= 3
    assert metric_value(text, "slimrank_requests_total", 'status="422"') >= 1
    assert metric_value(text, "slimrank_request_duration_seconds_count", 'endpoint="/v1/rank"') >= 4
    assert metric_value(text, "slimrank_requests_in_flight") == 0
    assert metric_value(text, "slimrank_queue_items") == 0
    assert metric_value(text, "slimrank_model_info", 'format="bf16"') == 1
    assert 'engine="torch"' in text
    assert "slimrank_model_parameters" in text


def test_concurrent_requests_are_batched_and_correct(server, reference):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(
                *(c.post("/v1/rank", json={"query": QUERY, "items": ITEMS}) for _ in range(16))
            )

    before = metric_value(
        httpx.get(server.url + "/metrics").text, "slimrank_batch_size_requests_count"
    )
    rs = asyncio.run(go())
    assert all(r.status_code == 200 for r in rs)
    for r in rs:
        got = {x["index"]: x["score"] for x in r.json()["results"]}
        assert [got[i] for i in range(4)] == pytest.approx(reference, abs=TOL)
    after = metric_value(
        httpx.get(server.url + "/metrics").text, "slimrank_batch_size_requests_count"
    )
    assert after - before < 16  # at least two requests shared a batch


# ---- shutdown (admission, deadlines, disconnects: test_service.py, in-process) ----------------------
@pytest.mark.slow  # a server subprocess and a full drain: about 16 s
def test_graceful_shutdown_finishes_in_flight(tiny_demo, tmp_path):
    s = ServerProcess(
        tiny_demo / "teacher", "torch", tmp_path, max_wait_ms=600, max_batch_tokens=100000
    )
    s.start()

    async def go():
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
            pending = asyncio.ensure_future(
                c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
            )
            await asyncio.sleep(0.2)
            s.proc.send_signal(15)  # SIGTERM while the request waits for its batch
            return await pending

    r = asyncio.run(go())
    assert r.status_code == 200 and len(r.json()["results"]) == 4
    # exits by itself after draining (uvicorn re-raises the SIGTERM it handled: code -15)
    assert s.proc.wait(timeout=30) == -15
    s.stop()
    assert "Application shutdown complete" in s.logs()
    with pytest.raises(httpx.HTTPError):
        httpx.get(s.url + "/health", timeout=1)
