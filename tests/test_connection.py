"""The HTTP layer over real sockets, in-process with the fake engine: read timeouts and the
header limit (``server/connection.py``), API keys over HTTP, and the drain on the first signal
(``server/lifecycle.py``). The same server as ``python -m server`` builds, minus the model."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import pytest
import uvicorn

from loadtest import hostile
from server.app import begin_drain, create_app
from server.connection import TimeoutHttpProtocol
from server.lifecycle import DrainingServer
from server.process import free_port
from server.settings import ServerSettings
from tests.fake_engine import FakeEngine

TIMEOUT_S = 0.5
RANK = {"query": "member likes jazz", "items": ["jazz guitar video", "stock tips"]}


class Running:
    def __init__(self, delay_s: float = 0.0, **settings):
        self.settings = ServerSettings(
            model="fake",
            served_model_name="fake",
            header_timeout_s=TIMEOUT_S,
            body_timeout_s=TIMEOUT_S,
            max_header_bytes=8192,
            port=free_port(),
            **settings,
        )
        self.app = create_app(
            self.settings, FakeEngine(self.settings.model_spec(), delay_s=delay_s)
        )
        config = uvicorn.Config(
            self.app,
            port=self.settings.port,
            http=TimeoutHttpProtocol.configured(self.settings),
            log_level="warning",
            timeout_graceful_shutdown=self.settings.graceful_shutdown_s,
        )
        self.server = DrainingServer(
            config, lambda: begin_drain(self.app), self.settings.drain_window_s
        )
        self.url = f"http://127.0.0.1:{self.settings.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("in-process server not ready")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def running():
    with Running(api_keys=["test-key"]) as r:
        yield r


AUTH = {"Authorization": "Bearer test-key"}


@pytest.mark.parametrize("case", hostile.PROTOCOL_CASES, ids=lambda c: c.name)
def test_protocol_case_answered_or_closed_within_the_timeout(running, case):
    (row,) = hostile.run_protocol_cases(
        "127.0.0.1", running.settings.port, [case], 4 * TIMEOUT_S + 1, headers=AUTH
    )
    assert row["ok"], row
    assert row["seconds"] is not None and row["seconds"] < 3 * TIMEOUT_S + 1, row


def test_timeouts_answer_408_in_the_error_shape(running):
    port = running.settings.port
    chunks = hostile._lying_length("127.0.0.1", port, "Authorization: Bearer test-key\r\n")
    res = hostile.raw_exchange("127.0.0.1", port, chunks, 0.0, 5)
    assert res.status == 408 and res.closed and res.headers["connection"] == "close"
    assert hostile.error_shape_problem(408, res.headers["content-type"], res.body) is None
    res = hostile.raw_exchange("127.0.0.1", port, hostile._huge_header("127.0.0.1", port, ""), 0, 5)
    assert res.status == 431 and res.closed


def test_keep_alive_connection_serves_requests_past_the_header_timeout(running):
    with httpx.Client(base_url=running.url, headers=AUTH) as c:
        for _ in range(3):  # each request re-arms the header timer; time spent inside is free
            assert c.post("/v1/rank", json=RANK).status_code == 200
            time.sleep(TIMEOUT_S / 2)


def test_api_keys_over_http(running):
    for path, body in [("/v1/rank", RANK), ("/v1/score", RANK)]:
        assert httpx.post(running.url + path, json=body).status_code == 401
        assert httpx.post(running.url + path, json=body, headers=AUTH).status_code == 200
    assert httpx.get(running.url + "/health").status_code == 200


def test_first_signal_drains_then_shuts_down_second_exits_at_once():
    with Running(delay_s=0.6, drain_window_s=1.0, max_wait_ms=0) as r:

        async def scenario():
            async with httpx.AsyncClient(base_url=r.url, timeout=10) as c:
                admitted = asyncio.create_task(c.post("/v1/rank", json=RANK))
                await asyncio.sleep(0.2)
                t0 = time.perf_counter()
                r.server.handle_exit(signal.SIGTERM, None)
                await asyncio.sleep(0.1)
                late = await c.post("/v1/rank", json=RANK)
                ready = await c.get("/ready")
                return await admitted, late, ready, t0

        admitted, late, ready, t0 = asyncio.run(scenario())
        assert admitted.status_code == 200 and admitted.headers["connection"] == "close"
        assert late.status_code == 503 and late.json()["error"]["type"] == "shutting_down"
        assert late.headers["connection"] == "close"
        assert ready.status_code == 503
        r.thread.join(10)
        assert not r.thread.is_alive()
        assert time.perf_counter() - t0 >= 0.9  # the window was kept
        r.server._captured_signals.clear()  # not re-raised in the test process
    with Running(drain_window_s=30.0) as r:
        r.server.handle_exit(signal.SIGTERM, None)
        time.sleep(0.2)
        r.server.handle_exit(signal.SIGTERM, None)  # second signal: no 30 s wait
        r.thread.join(5)
        assert not r.thread.is_alive()
