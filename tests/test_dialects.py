"""The peers' API dialects, spoken as their own clients speak them: SGLang's documented
``/v1/score`` request (text or token ids, any label ids, apply_softmax), Cohere's SDK (v1 and
v2 clients), and vLLM's ``vllm-rerank`` benchmark backend. The fake engine stands in for the
model (shapes, validation, which ids reached the engine); ``test_import.py`` checks the scores of
real models."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn

from server.app import create_app
from server.settings import ServerSettings
from tests.fake_engine import (
    NO_ID,
    OTHER_MASS,
    VOCAB,
    YES_ID,
    FakeEngine,
    WordTask,
    expected_scores,
    item_score,
    label_scores,
    token_id,
)
from tests.test_service import ITEMS, QUERY, REF, serving


def make(**kw):
    s = ServerSettings(model="fake", served_model_name="fake", max_items=64)
    engine = FakeEngine(s.model_spec(), **kw)
    return create_app(s, engine), engine


@pytest.fixture
async def fake():
    app, engine = make()
    async with serving(app, engine) as client:
        yield client, engine


# ---- SGLang /v1/score ---------------------------------------------------------------------------
async def test_sglang_documented_request_without_apply_softmax(fake):
    """SGLang's docs send text, label_token_ids and no apply_softmax: its default (false) gives
    each id's probability over the whole vocabulary."""
    client, _ = fake
    r = await client.post(
        "/v1/score",
        json={"query": QUERY, "items": ITEMS, "label_token_ids": [YES_ID, NO_ID], "model": "fake"},
    )
    assert r.status_code == 200, r.text
    scores = np.array(r.json()["scores"])
    assert scores[:, 0] == pytest.approx((1 - OTHER_MASS) * REF)
    assert scores[:, 1] == pytest.approx((1 - OTHER_MASS) * (1 - REF))
    assert (scores.sum(axis=1) < 1).all()


async def test_sglang_token_ids_reach_the_engine_as_given(fake):
    client, engine = fake
    query, items = [5, 6, 7], [[8, 9], [10, 11, 12]]
    r = await client.post(
        "/v1/score",
        json={"query": query, "items": items, "label_token_ids": [3, YES_ID, 1199]},
    )
    assert r.status_code == 200, r.text
    sent = engine.requests[-1]
    assert sent.query_ids == query and sent.item_ids == items
    assert sent.label_ids == (3, YES_ID, 1199) and sent.full_vocab
    expected = [label_scores(ids, (3, YES_ID, 1199), True) for ids in items]
    assert np.array(r.json()["scores"]) == pytest.approx(np.array(expected))
    assert r.json()["usage"]["computed_tokens"] == 3 + 2 + 3


async def test_sglang_single_string_item_and_other_label_ids_with_softmax(fake):
    client, engine = fake
    r = await client.post(
        "/v1/score",
        json={"query": QUERY, "items": ITEMS[0], "label_token_ids": [NO_ID, 42],
              "apply_softmax": True},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    (row,) = r.json()["scores"]
    ids = WordTask().encode_items(None, ITEMS[:1])[0]
    assert row == pytest.approx(label_scores(ids, (NO_ID, 42), False))
    assert sum(row) == pytest.approx(1.0)
    assert engine.requests[-1].n_items == 1


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"query": [1, 2, VOCAB], "items": [[1]]}, 422, f"query[2] = {VOCAB}"),
        ({"query": [1, 2], "items": [[1, -5]]}, 422, "items[0][1] = -5"),
        ({"query": [1], "items": [[1]], "label_token_ids": [YES_ID, -1]}, 422,
         "label_token_ids[1] = -1"),
        ({"query": QUERY, "items": ITEMS, "label_token_ids": [10**9]}, 422,
         "label_token_ids[0]"),
        ({"query": QUERY, "items": ITEMS, "label_token_ids": [2**70]}, 422,
         "label_token_ids[0]"),
        ({"query": [1, 2], "items": ["text"]}, 422, "items: text with a token-id query"),
        ({"query": QUERY, "items": [[1, 2]]}, 422, "items: token ids with a text query"),
        ({"query": [1], "items": [[1]], "instruction": "x"}, 422, "instruction"),
        ({"query": [1], "items": [[]]}, 422, "items"),
        ({"query": QUERY, "items": ITEMS, "instruction": "x"}, 422, "instruction"),
        ({"query": QUERY, "items": ITEMS, "label_token_ids": list(range(65))}, 422,
         "label_token_ids"),
    ],
)  # fmt: skip
async def test_bad_score_requests_name_the_field(fake, body, status, field):
    client, _ = fake
    r = await client.post("/v1/score", json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["error"]["message"]


async def test_instruction_goes_into_the_query_prefix():
    app, engine = make(has_instruction=True)
    async with serving(app, engine) as client:
        for path, body in [
            ("/v1/rank", {"query": QUERY, "items": ITEMS, "instruction": "find music"}),
            ("/v1/rerank", {"query": QUERY, "documents": ITEMS, "instruction": "find music"}),
            ("/v1/score", {"query": QUERY, "items": ITEMS, "instruction": "find music"}),
        ]:
            r = await client.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
            assert engine.requests[-1].query_ids[:2] == [token_id("find"), token_id("music")]


# ---- Cohere /v2/rerank, /v1/rerank ------------------------------------------------------------
async def test_v2_rerank_documents_as_strings_or_objects_and_top_n(fake):
    client, _ = fake
    docs = [ITEMS[0], {"text": ITEMS[1]}, ITEMS[2], {"text": ITEMS[3]}]
    order = list(np.argsort(-REF, kind="stable"))
    for top_n, n in [(None, 4), (0, 4), (2, 2)]:
        body = {"model": "fake", "query": QUERY, "documents": docs}
        if top_n is not None:
            body["top_n"] = top_n
        r = await client.post("/v2/rerank", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert [x["index"] for x in out["results"]] == order[:n]
        assert [x["relevance_score"] for x in out["results"]] == pytest.approx(REF[order[:n]])
        assert out["meta"]["billed_units"] == {"search_units": 1}
    v1 = await client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "top_n": 0})
    assert [x["index"] for x in v1.json()["results"]] == order
    long = await client.post(
        "/v2/rerank", json={"query": QUERY, "documents": docs, "max_tokens_per_doc": 3}
    )
    assert long.status_code == 422 and "documents[0]" in long.json()["error"]["message"]


# ---- real HTTP: the peers' own client code --------------------------------------------------------
@pytest.fixture(scope="module")
def http_server():
    """The app with the fake engine behind uvicorn in a thread (the clients need a URL)."""
    app, _ = make()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(500):
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    else:
        raise TimeoutError("server did not get ready")
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def test_cohere_v1_and_v2_clients(http_server):
    cohere = pytest.importorskip("cohere")
    order = list(np.argsort(-REF, kind="stable"))
    v2 = cohere.ClientV2(api_key="unused", base_url=http_server)
    out = v2.rerank(model="fake", query=QUERY, documents=ITEMS, top_n=3)
    assert [r.index for r in out.results] == order[:3]
    assert [r.relevance_score for r in out.results] == pytest.approx(REF[order[:3]])
    v1 = cohere.Client(api_key="unused", base_url=http_server)
    out = v1.rerank(model="fake", query=QUERY, documents=ITEMS, top_n=2, return_documents=True)
    assert [r.index for r in out.results] == order[:2]
    assert [r.document.text for r in out.results] == [ITEMS[i] for i in order[:2]]
    assert [r.relevance_score for r in out.results] == pytest.approx(REF[order[:2]])


def test_vllm_rerank_benchmark_backend(http_server):
    """vLLM's ``vllm bench serve --backend vllm-rerank`` request function, against us."""
    lib = pytest.importorskip("vllm.benchmarks.lib.endpoint_request_func")
    import aiohttp

    async def run():
        inp = lib.RequestFuncInput(
            prompt=[QUERY, *ITEMS],
            api_url=f"{http_server}/v1/rerank",
            prompt_len=100,
            output_len=0,
            model="fake",
        )
        async with aiohttp.ClientSession() as session:
            return await lib.async_request_vllm_rerank(inp, session)

    out = asyncio.run(run())
    assert out.success, out.error


def test_fake_engine_scores_are_spread():
    """The fake's scores differ per item, so an ordering test can fail."""
    assert np.std(expected_scores(ITEMS)) > 0.05
    assert len({item_score([i]) for i in range(10)}) == 10
