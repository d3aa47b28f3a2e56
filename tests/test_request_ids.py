"""Request ids, trace ids, exemplars and the per-request timing headers, in-process (fake
engine over ASGI); an exemplar read back from a real Prometheus: ``test_deploy.py``."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from server.request_ids import MAX_ID_CHARS, RequestIdFilter, from_headers
from tests.test_service import ITEMS, LIMITS, QUERY, make_app, serving

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_ids_from_headers():
    assert from_headers([(b"x-request-id", b"abc-123")]).request_id == "abc-123"
    fresh = from_headers([])
    assert len(fresh.request_id) == 32 and not fresh.replaced
    for bad in (b"has space", b"x" * (MAX_ID_CHARS + 1), b"caf\xc3\xa9", b"", b"a\nb"):
        ids = from_headers([(b"x-request-id", bad)])
        assert ids.replaced and ids.request_id != bad.decode("latin-1"), bad
    assert from_headers([(b"traceparent", TRACEPARENT.encode())]).trace_id == TRACE
    for bad in (b"00-zz-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f067aa0ba902b7-01".encode()):
        assert from_headers([(b"traceparent", bad)]).trace_id is None
    assert from_headers([(b"traceparent", TRACEPARENT.encode())]).exemplar() == {"trace_id": TRACE}
    assert from_headers([(b"x-request-id", b"r1")]).exemplar() == {"request_id": "r1"}


@pytest.fixture
async def client():
    app, engine = make_app(**LIMITS)
    async with serving(app, engine) as c:
        c.app = app
        yield c


async def test_request_id_in_header_body_log_and_error(client, caplog):
    caplog.set_level(logging.INFO, logger="slimrank.access")
    body = {"query": QUERY, "items": ITEMS}
    r = await client.post("/v1/rank", json=body, headers={"x-request-id": "client-7"})
    assert r.headers["x-request-id"] == "client-7" and r.json()["request_id"] == "client-7"
    assert '"request_id": "client-7"' in caplog.text
    r = await client.post("/v1/rerank", json={"query": QUERY, "documents": ITEMS},
                          headers={"x-request-id": "client-8"})  # fmt: skip
    assert r.json()["id"] == "client-8"
    r = await client.post("/v1/score", json={"query": QUERY, "items": ITEMS})
    assert r.json()["request_id"] == r.headers["x-request-id"]
    # errors carry it too, in the body and the header
    r = await client.post("/v1/rank", json={"query": QUERY, "items": []},
                          headers={"x-request-id": "client-9"})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["request_id"] == "client-9"
    assert r.headers["x-request-id"] == "client-9"


async def test_unusable_request_id_is_replaced_and_never_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    bad = "x" * 500
    r = await client.post("/v1/rank", json={"query": QUERY, "items": ITEMS},
                          headers={"x-request-id": bad})  # fmt: skip
    assert r.status_code == 200
    assert r.headers["x-request-id-replaced"] == "true"
    assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 32
    assert bad not in caplog.text


async def test_timing_headers(client):
    r = await client.post("/v1/rank", json={"query": QUERY, "items": ITEMS})
    times = {h: float(r.headers[h]) for h in
             ("x-queue-time", "x-tokenization-time", "x-inference-time", "x-total-time")}  # fmt: skip
    assert all(v >= 0 for v in times.values()), times
    assert times["x-total-time"] >= times["x-queue-time"] + times["x-inference-time"], times
    assert r.headers["x-model-version"] == "fake:1"


async def exemplars(client) -> dict[str, list[dict]]:
    r = await client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    seen: dict[str, list[dict]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.exemplar is not None:
                seen.setdefault(family.name, []).append(s.exemplar.labels)
    return seen


LATENCY = ("slimrank_request_duration_seconds", "slimrank_request_prefill_seconds",
           "slimrank_queue_wait_seconds")  # fmt: skip


async def test_exemplars_carry_the_trace_id_else_the_request_id(client):
    body = {"query": QUERY, "items": ITEMS}
    await client.post("/v1/rank", json=body, headers={"traceparent": TRACEPARENT})
    seen = await exemplars(client)
    for name in LATENCY:
        assert {"trace_id": TRACE} in seen[name], (name, seen.get(name))
    app, engine = make_app(**LIMITS)  # a fresh registry: no exemplar from the request above
    async with serving(app, engine) as c:
        await c.post("/v1/rank", json=body, headers={"x-request-id": "only-an-id"})
        seen = await exemplars(c)
    for name in LATENCY:
        assert {"request_id": "only-an-id"} in seen[name], (name, seen.get(name))
    assert (await client.get("/metrics")).headers["content-type"].startswith("text/plain")


def test_log_lines_carry_the_request_id():
    from server.request_ids import RequestIds, reset, set_current

    record = logging.LogRecord("slimrank.server", logging.INFO, __file__, 1, "m", (), None)
    token = set_current(RequestIds("r-42"))
    try:
        RequestIdFilter().filter(record)
    finally:
        reset(token)
    assert record.request_id == "r-42"
    outside = logging.LogRecord("slimrank.server", logging.INFO, __file__, 1, "m", (), None)
    RequestIdFilter().filter(outside)
    assert outside.request_id == "-"
