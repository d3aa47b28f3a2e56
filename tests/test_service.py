"""The app and the ranking service in-process, over ASGI, with the fake engine: the three
dialects, bad input, readiness, admission (429), deadlines (504), client disconnects and the
drain at shutdown. The same app with the real model over real HTTP: ``test_server.py``."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest

from server.app import begin_drain, create_app
from server.engines import create_engine
from server.engines.faults import FaultyEngine
from server.settings import ServerSettings
from tests.fake_engine import NO_ID, OTHER_MASS, YES_ID, FakeEngine, expected_scores
from tests.serving import metric_value

QUERY = "member profile: nurse, expert level. interests: music, travel, cooking."
ITEMS = [
    "jazz guitar: excellent expert music video.",
    "budget stocks: poor beginner finance article.",
    "island journey: good expert travel video.",
    "bread pasta: mediocre intermediate cooking course.",
]
REF = expected_scores(ITEMS)
LIMITS = dict(max_items=64, max_query_tokens=200, max_item_tokens=40, max_body_bytes=65536)


def make_app(delay_s: float = 0.0, **settings):
    s = ServerSettings(model="fake", served_model_name="fake", **settings)
    engine = FakeEngine(s.model_spec(), delay_s=delay_s)
    return create_app(s, engine), engine


async def wait_until(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("condition not met")


@asynccontextmanager
async def serving(app, engine):
    """The app's lifespan entered (engine loaded and warmed), and a client over ASGI."""
    async with app.router.lifespan_context(app):
        await wait_until(lambda: app.state.service.ready)
        engine.batches.clear()  # the warm-up batch
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def metrics_text(app) -> str:
    from prometheus_client import generate_latest

    return generate_latest(app.state.metrics.registry).decode()


@pytest.fixture
async def client():
    app, engine = make_app(**LIMITS)
    async with serving(app, engine) as c:
        yield c


# ---- the three dialects ----------------------------------------------------------------------
async def test_rank_sorted_with_usage(client):
    body = (await client.post("/v1/rank", json={"query": QUERY, "items": ITEMS})).json()
    assert [x["index"] for x in body["results"]] == list(np.argsort(-REF, kind="stable"))
    got = {x["index"]: x["score"] for x in body["results"]}
    assert [got[i] for i in range(4)] == pytest.approx(REF)
    q, items = len(QUERY.split()), sum(len(i.split()) + 1 for i in ITEMS)
    assert body["usage"] == {
        "prompt_tokens": 4 * q + items,
        "computed_tokens": q + items,
        "items": 4,
        "total_tokens": 4 * q + items,
    }
    assert body["model"] == "fake"
    top = await client.post("/v1/rank", json={"query": QUERY, "items": ITEMS, "top_k": 2})
    assert top.json()["results"] == body["results"][:2]


async def test_score_per_label_token_in_the_order_asked(client):
    r = await client.post(
        "/v1/score",
        json={
            "query": QUERY,
            "items": ITEMS,
            "label_token_ids": [NO_ID, YES_ID],
            "apply_softmax": True,
        },
    )
    scores = np.array(r.json()["scores"])
    assert r.json()["object"] == "scoring"
    assert scores[:, 1] == pytest.approx(REF) and scores[:, 0] == pytest.approx(1 - REF)
    # SGLang's default: apply_softmax=false, probabilities over the whole vocabulary
    default = (await client.post("/v1/score", json={"query": QUERY, "items": ITEMS})).json()
    assert np.array(default["scores"])[:, 0] == pytest.approx((1 - OTHER_MASS) * REF)


async def test_rerank(client):
    r = await client.post(
        "/v1/rerank",
        json={
            "model": "fake",
            "query": QUERY,
            "documents": ITEMS,
            "top_n": 3,
            "return_documents": True,
            "truncate_prompt_tokens": -1,
        },
    )
    body = r.json()
    assert [x["index"] for x in body["results"]] == list(np.argsort(-REF, kind="stable")[:3])
    assert all(x["document"]["text"] == ITEMS[x["index"]] for x in body["results"])
    assert body["id"] == r.headers["x-request-id"]  # Cohere's id: the request's
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    plain = await client.post("/v1/rerank", json={"query": QUERY, "documents": ITEMS})
    assert all(x["document"] is None for x in plain.json()["results"])


async def test_models_health_ready(client):
    listing = (await client.get("/v1/models")).json()
    card = listing["data"][0]
    assert card["memory_bytes"] >= 0 and card["load_seconds"] >= 0
    del card["memory_bytes"], card["load_seconds"]
    assert card == {
        "id": "fake:1",
        "object": "model",
        "owned_by": "slimrank",
        "name": "fake",
        "version": "1",
        "state": "ready",
        "error": None,
        "labels": ["stable"],
        "format": "bf16",
        "engine": "fake",
        "kernel": "fake",
        "kernel_reason": "a test double",
        "parameters": 1234,
        "max_items": 64,
        "label_tokens": [" yes", " no"],
        "calibrator": None,
        "score_reference": False,
    }
    assert listing["default"] == "fake"
    assert listing["labels"] == [
        {"model": "fake", "label": "stable", "arms": {"1": 1.0}, "shadow": None,
         "shadow_percent": None}
    ]  # fmt: skip
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = (await client.get("/ready")).json()
    assert ready == {"status": "ready", "model": "fake", "version": "1"}


# ---- bad input: 4xx in the error shape, never 500 ---------------------------------------------
BAD = [
    ("/v1/rank", {"query": QUERY, "items": []}, 422, "invalid_request", "items"),
    ("/v1/rank", {"query": QUERY, "items": "not a list"}, 422, "invalid_request", "items"),
    ("/v1/rank", {"query": QUERY, "items": [1, 2]}, 422, "invalid_request", "items"),
    ("/v1/rank", {"query": "", "items": ITEMS}, 422, "invalid_request", "query"),
    ("/v1/rank", {"items": ITEMS}, 422, "invalid_request", "query"),
    (
        "/v1/rerank",
        {"query": QUERY, "documents": ITEMS, "truncate_prompt_tokens": 8},
        422,
        "invalid_request",
        "truncate_prompt_tokens",
    ),
    ("/v1/rank", {"query": QUERY, "items": ["ok", ""]}, 422, "invalid_request", "items[1]"),
    ("/v1/rank", {"query": QUERY, "items": ITEMS, "top_k": 0}, 422, "invalid_request", "top_k"),
    ("/v1/rank", {"query": QUERY, "items": ITEMS, "bogus": 1}, 422, "invalid_request", "bogus"),
    ("/v1/rank", {"query": QUERY, "items": ["x"] * 65}, 422, "too_many_items", "max_items=64"),
    (
        "/v1/rank",
        {"query": "music " * 300, "items": ITEMS},
        422,
        "query_too_long",
        "max_query_tokens=200",
    ),
    (
        "/v1/rank",
        {"query": QUERY, "items": ["ok", "long " * 50]},
        422,
        "item_too_long",
        "items[1] is 51 tokens",
    ),
    (
        "/v1/rank",
        {"query": QUERY, "items": ITEMS, "model": "other"},
        404,
        "model_not_found",
        "other",
    ),
    (
        "/v1/score",
        {"query": QUERY, "items": ITEMS, "label_token_ids": [1, 5000]},
        422,
        "invalid_token_id",
        "label_token_ids[1] = 5000",
    ),
    (
        "/v1/score",
        {"query": QUERY, "items": ITEMS, "label_token_ids": []},
        422,
        "invalid_request",
        "label_token_ids",
    ),
    (
        "/v1/score",
        {"query": QUERY, "items": ITEMS, "item_first": True},
        422,
        "unsupported",
        "item_first",
    ),
    (
        "/v1/rerank",
        {"query": QUERY, "documents": ITEMS, "top_n": -1},
        422,
        "invalid_request",
        "top_n",
    ),
]


@pytest.mark.parametrize("path, payload, status, kind, needle", BAD)
async def test_bad_input(client, path, payload, status, kind, needle):
    r = await client.post(path, json=payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == kind and needle in err["message"], err


async def test_malformed_json_big_bodies_unknown_paths(client):
    headers = {"content-type": "application/json"}
    r = await client.post("/v1/rank", content=b'{"query": "x", "items": [', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"
    # declared too big (content-length)
    r = await client.post("/v1/rank", json={"query": QUERY, "items": ["x" * 1000] * 70})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    async def chunks():  # streamed, no content-length: refused once the limit is crossed
        for _ in range(70):
            yield b"x" * 1000

    r = await client.post("/v1/rank", content=chunks(), headers=headers)
    assert r.status_code == 413 and "65536 bytes" in r.json()["error"]["message"]
    r = await client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = await client.get("/v1/rank")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


async def test_engine_failure_is_500_without_the_exception_text(caplog):
    app, engine = make_app()

    async def broken(requests):
        raise RuntimeError("kernel exploded")

    with caplog.at_level(logging.ERROR, logger="slimrank.server"):
        async with serving(app, engine) as c:
            engine.score = broken
            r = await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
    assert r.status_code == 500
    err = r.json()["error"]
    rid = r.headers["x-request-id"]
    assert err["type"] == "engine_error" and rid in err["message"]
    assert "exploded" not in r.text and QUERY not in r.text
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged and "kernel exploded" in str(logged[0].exc_info[1])


async def test_unexpected_failure_is_a_generic_500_with_a_request_id():
    app, engine = make_app()

    def broken(*args):
        raise ValueError("secret member text")

    async with app.router.lifespan_context(app):
        await wait_until(lambda: app.state.service.ready)
        app.state.service.models = broken  # a bug outside the engine path
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/v1/models")
    assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
    assert "secret" not in r.text and r.headers["x-request-id"] in r.text


async def test_fault_batches_fail_only_their_own_requests():
    s = ServerSettings(model="fake", served_model_name="fake", max_wait_ms=0)
    engine = FakeEngine(s.model_spec())
    app = create_app(s, FaultyEngine(engine, (2,)))
    async with serving(app, engine) as c:
        got = [(await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})) for _ in range(4)]
    assert [r.status_code for r in got] == [200, 500, 200, 200]
    assert got[1].json()["error"]["type"] == "engine_error"
    assert len(engine.batches) == 3  # the faulty batch never reached the engine


def test_fault_batches_setting_wraps_the_engine_where_engines_are_made():
    s = ServerSettings(model="fake", fault_batches=[3])
    engine = create_engine(s.model_spec(), tuple(s.fault_batches))
    assert isinstance(engine, FaultyEngine) and engine.fail_batches == {3}
    assert engine.inner.name == "torch" and engine.name == "torch"
    assert not isinstance(create_engine(s.model_spec()), FaultyEngine)


async def test_dead_engine_turns_health_and_ready_503_and_fails_requests_at_once():
    app, engine = make_app(max_wait_ms=0)
    async with serving(app, engine) as c:
        assert (await c.get("/health")).status_code == 200
        engine.is_alive = lambda: False
        for path in ("/health", "/ready"):
            r = await c.get(path)
            assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"
        r = await asyncio.wait_for(c.post("/v1/rank", json={"query": QUERY, "items": ITEMS}), 1)
        assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"


async def test_not_ready_while_loading_then_ready():
    gate = asyncio.Event()
    s = ServerSettings(model="fake", served_model_name="fake")
    app = create_app(s, FakeEngine(s.model_spec(), start_gate=gate))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            r = await c.get("/ready")
            assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
            assert r.headers["retry-after"] == "5"
            r = await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
            assert r.status_code == 503 and r.json()["error"]["message"] == "model is loading"
            assert (await c.get("/v1/models")).json()["data"][0]["format"] == "loading"
            gate.set()
            await wait_until(lambda: app.state.service.ready)
            assert (await c.get("/ready")).status_code == 200
            assert (await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})).is_success
            assert metric_value(metrics_text(app), "slimrank_ready") == 1


async def test_load_failure_is_reported_by_ready():
    # exit_on_load_error off, else the process is sent SIGTERM
    s = ServerSettings(model="fake", served_model_name="fake", exit_on_load_error=False)
    app = create_app(s, FakeEngine(s.model_spec(), fail_start=OSError("weights missing")))
    async with app.router.lifespan_context(app):
        await wait_until(lambda: app.state.service.load_error is not None)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            r = await c.get("/ready")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err.pop("request_id") == r.headers["x-request-id"]
    assert err == {"type": "not_ready", "message": "fake:1: OSError: weights missing"}


# ---- admission, deadlines ----------------------------------------------------------------------
async def test_overload_gives_429_with_retry_after():
    # batches wait 300 ms for company: the first request holds the whole queue meanwhile
    app, engine = make_app(max_queue_items=8, max_wait_ms=300, max_batch_tokens=100000)
    async with serving(app, engine) as c:
        first = asyncio.create_task(c.post("/v1/rank", json={"query": QUERY, "items": ITEMS * 2}))
        await wait_until(lambda: metric_value(metrics_text(app), "slimrank_queue_items") == 8)
        refused = await asyncio.gather(
            *(c.post("/v1/rank", json={"query": QUERY, "items": ITEMS[:1]}) for _ in range(3))
        )
        assert (await first).status_code == 200
    assert [r.status_code for r in refused] == [429] * 3
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    err = refused[0].json()["error"]
    assert err["type"] == "overloaded" and "8 items queued, limit 8" in err["message"]
    assert engine.batches == [[8]]
    text = metrics_text(app)
    assert metric_value(text, "slimrank_requests_total", 'status="429"') == 3
    assert metric_value(text, "slimrank_requests_total", 'status="200"') == 1


async def test_deadline_in_the_queue_gives_504_and_is_not_computed():
    app, engine = make_app(max_wait_ms=400, request_timeout_s=0.1, max_batch_tokens=100000)
    async with serving(app, engine) as c:
        r = await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
        assert r.status_code == 504 and r.json()["error"]["type"] == "deadline_exceeded"
        assert "0.1s deadline" in r.json()["error"]["message"]
        await asyncio.sleep(0.5)  # past the batch window: the request was dropped, not run
        assert engine.batches == []
        assert metric_value(metrics_text(app), "slimrank_queue_items") == 0


async def test_deadline_while_scoring_gives_504():
    app, engine = make_app(delay_s=0.5, max_wait_ms=0, request_timeout_s=0.1)
    async with serving(app, engine) as c:
        r = await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
    assert r.status_code == 504 and r.json()["error"]["type"] == "deadline_exceeded"


# ---- a client that goes away ------------------------------------------------------------------
def http_scope(path: str, body: bytes) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }


async def test_disconnected_client_frees_its_queue_capacity_and_costs_no_compute():
    app, engine = make_app(max_queue_items=4, max_wait_ms=400, max_batch_tokens=100000)
    async with serving(app, engine) as c:
        body = json.dumps({"query": QUERY, "items": ITEMS}).encode()
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []

        async def receive():
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)

        call = asyncio.create_task(app(http_scope("/v1/rank", body), receive, send))
        await wait_until(lambda: metric_value(metrics_text(app), "slimrank_queue_items") == 4)
        gone.set()  # the client closes the connection while its request waits for a batch
        await call
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
        assert metric_value(metrics_text(app), "slimrank_queue_items") == 0
        # its capacity is free at once: a request needing the whole queue is admitted
        r = await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
        assert r.status_code == 200
    assert engine.batches == [[4]]  # only the second request was computed


# ---- drain on shutdown -------------------------------------------------------------------------
async def test_drain_finishes_in_flight_and_refuses_new_with_503():
    app, engine = make_app(delay_s=0.3, max_wait_ms=0)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    await wait_until(lambda: app.state.service.ready)
    engine.batches.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        in_flight = asyncio.create_task(c.post("/v1/rank", json={"query": QUERY, "items": ITEMS}))
        await wait_until(lambda: engine.running == 1)
        shutdown = asyncio.create_task(lifespan.__aexit__(None, None, None))  # as on SIGTERM
        await asyncio.sleep(0.05)
        late = await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
        assert late.status_code == 503 and late.json()["error"]["type"] == "shutting_down"
        assert not shutdown.done()  # still draining
        r = await in_flight
        assert r.status_code == 200 and len(r.json()["results"]) == 4
        await shutdown
    assert engine.batches == [[4]] and engine.stopped


async def test_begin_drain_turns_ready_503_and_refuses_new_requests_with_close():
    app, engine = make_app(delay_s=0.3, max_wait_ms=0)
    async with serving(app, engine) as c:
        in_flight = asyncio.create_task(c.post("/v1/rank", json={"query": QUERY, "items": ITEMS}))
        await wait_until(lambda: engine.running == 1)
        begin_drain(app)  # the first SIGTERM (server/lifecycle.py)
        ready = await c.get("/ready")
        late = await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
        done = await in_flight
    assert ready.status_code == 503 and ready.json()["error"]["type"] == "shutting_down"
    assert late.status_code == 503 and late.json()["error"]["type"] == "shutting_down"
    assert late.headers["connection"] == "close" and int(late.headers["retry-after"]) >= 1
    assert done.status_code == 200 and done.headers["connection"] == "close"
    assert engine.batches == [[4]]
    assert metric_value(metrics_text(app), "slimrank_ready") == 0  # drained: out of rotation


# ---- API keys ----------------------------------------------------------------------------------
SCORING = {
    "/v1/rank": {"query": QUERY, "items": ITEMS},
    "/v1/score": {"query": QUERY, "items": ITEMS},
    "/v1/rerank": {"query": QUERY, "documents": ITEMS},
    "/v2/rerank": {"query": QUERY, "documents": ITEMS},
}


def scoring_routes(app) -> set[str]:
    """The app's own scoring routes (tagged so in its OpenAPI schema), not a hand-kept list."""
    paths = app.openapi()["paths"]
    return {p for p, ops in paths.items() if any("scoring" in op["tags"] for op in ops.values())}


@pytest.mark.parametrize("path", list(SCORING))
async def test_api_key_required_on_scoring_endpoints(path):
    app, engine = make_app(api_keys=["k-one", "k-two"])
    async with serving(app, engine) as c:
        none = await c.post(path, json=SCORING[path])
        wrong = await c.post(path, json=SCORING[path], headers={"Authorization": "Bearer k-on"})
        basic = await c.post(path, json=SCORING[path], headers={"Authorization": "Basic k-one"})
        ok = [
            await c.post(path, json=SCORING[path], headers={"Authorization": f"Bearer {k}"})
            for k in ("k-one", "k-two")
        ]
    for r in (none, wrong, basic):
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert [r.status_code for r in ok] == [200, 200]


async def test_api_key_probes_open_metrics_closed_unless_public(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# one key a line\nfrom-file\n")
    app, engine = make_app(api_key_file=str(key_file))
    async with serving(app, engine) as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/ready")).status_code == 200
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/v1/models")).status_code == 401
        auth = {"Authorization": "Bearer from-file"}
        assert (await c.get("/metrics", headers=auth)).status_code == 200
    app, engine = make_app(api_keys=["k"], metrics_public=True)
    async with serving(app, engine) as c:
        assert (await c.get("/metrics")).status_code == 200


def test_api_keys_from_env_comma_separated(monkeypatch):
    monkeypatch.setenv("SLIMRANK_API_KEYS", "a, b,")
    monkeypatch.setenv("SLIMRANK_FAULT_BATCHES", "3,5")
    s = ServerSettings(model="fake")
    assert s.accepted_keys() == ["a", "b"] and s.fault_batches == [3, 5]


# ---- request text stays out of logs and errors ------------------------------------------------
async def test_request_text_reaches_no_log_line(caplog):
    marker = "zq-private-7f3a9"
    app, engine = make_app(**LIMITS)
    with caplog.at_level(logging.DEBUG):
        async with serving(app, engine) as c:
            await c.post("/v1/rank", json={"query": f"{QUERY} {marker}", "items": ITEMS})
            bad = json.dumps({"query": marker, "documents": [marker, "\ud800"]})
            await c.post("/v1/rerank", content=bad, headers={"content-type": "application/json"})
            await c.post("/v1/score", json={"query": marker, "items": [marker] * 100})
            await c.post("/v1/rank", json={"query": marker, "items": ITEMS, "bogus": marker})
    assert caplog.records
    assert not [r.getMessage() for r in caplog.records if marker in r.getMessage()]


async def test_log_request_text_is_opt_in(caplog):
    marker = "zq-private-debug"
    app, engine = make_app(log_request_text=True)
    with caplog.at_level(logging.DEBUG, logger="slimrank.request_text"):
        async with serving(app, engine) as c:
            await c.post("/v1/rank", json={"query": marker, "items": ITEMS})
    assert any(marker in r.getMessage() for r in caplog.records)


async def test_lone_surrogates_are_422_naming_the_field(client):
    for path, field, body in [
        ("/v1/rank", "items[1]", {"query": QUERY, "items": ["ok", "a\ud800b"]}),
        ("/v1/rerank", "documents[0]", {"query": QUERY, "documents": ["\udfff"]}),
        ("/v1/score", "query", {"query": "\ud83d", "items": ITEMS}),
    ]:
        raw = json.dumps(body).encode()  # json.dumps escapes the surrogate as \\udxxx
        r = await client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and field in r.json()["error"]["message"], (path, r.text)


async def test_rerank_limits_name_documents(client):
    r = await client.post("/v1/rerank", json={"query": QUERY, "documents": ["x"] * 65})
    assert r.status_code == 422 and "65 documents" in r.json()["error"]["message"]


# ---- accounting ------------------------------------------------------------------------------
async def test_every_scoring_route_is_counted_and_logged(caplog):
    app, engine = make_app()
    routes = scoring_routes(app)
    assert "/v2/rerank" in routes and routes <= set(SCORING), (
        f"no test body for {routes - set(SCORING)}"
    )
    with caplog.at_level(logging.INFO, logger="slimrank.access"):
        async with serving(app, engine) as c:
            for path in sorted(routes):
                assert (await c.post(path, json=SCORING[path])).status_code == 200, path
            assert (await c.get(sorted(routes)[0])).status_code == 405  # counted on its route
            for path in ("/health", "/ready", "/v1/models", "/metrics"):
                assert (await c.get(path)).status_code == 200
            text = (await c.get("/metrics")).text
    for path in routes:
        assert metric_value(text, "slimrank_requests_total", f'endpoint="{path}",status="200"') == 1
        assert metric_value(text, "slimrank_request_duration_seconds_count", f'endpoint="{path}"')
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "slimrank.access"]
    assert sorted(x["endpoint"] for x in lines if x["status"] == 200) == sorted(routes)
    # probes, /v1/models and /metrics are not scoring traffic: neither counted nor logged
    assert len(lines) == len(routes) + 1 and "/health" not in text


async def test_metrics_and_access_log(caplog):
    app, engine = make_app(**LIMITS)
    with caplog.at_level(logging.INFO, logger="slimrank.access"):
        async with serving(app, engine) as c:
            for _ in range(3):
                assert (await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS})).is_success
            assert (
                await c.post("/v1/score", json={"query": QUERY, "items": []})
            ).status_code == 422
            assert (await c.post("/v1/other", json={})).status_code == 404
            text = (await c.get("/metrics")).text
    assert metric_value(text, "slimrank_items_scored_total") == 12
    assert metric_value(text, "slimrank_requests_total", 'endpoint="/v1/rank",status="200"') == 3
    assert metric_value(text, "slimrank_requests_total", 'endpoint="/v1/score",status="422"') == 1
    assert metric_value(text, "slimrank_requests_total", 'endpoint="other",status="404"') == 1
    assert metric_value(text, "slimrank_request_duration_seconds_count", 'endpoint="/v1/rank"') == 3
    assert metric_value(text, "slimrank_requests_in_flight") == 0
    assert metric_value(text, "slimrank_queue_items") == 0
    assert metric_value(text, "slimrank_model_info", 'engine="fake",format="bf16"') == 1
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "slimrank.access"]
    assert [x["status"] for x in lines] == [200, 200, 200, 422, 404]
    ok = lines[0]
    assert ok["endpoint"] == "/v1/rank" and ok["items"] == 4 and ok["batch"] == 1
    assert {"latency_ms", "queue_ms", "prefill_ms", "tokenize_ms", "request_id"} <= set(ok)
    assert set(lines[3]) == {"endpoint", "status", "latency_ms", "request_id"}
