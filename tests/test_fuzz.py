"""Fuzzing and hostile input (loadtest/fuzz.py, loadtest/hostile.py).

Fast: the case list is well formed, the error-shape check, and the raw-socket client against a
tiny local server. Slow (a real server on the tiny teacher): a seeded schemathesis run with 0
5xx and every 4xx in the error shape, every scoring endpoint of the server's schema fuzzed in
full, each hostile case, each protocol case, and the server still alive.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from loadtest import hostile
from loadtest.hostile import (
    JSON_CASES,
    PROTOCOL_CASES,
    error_shape_problem,
    json_case_problem,
    raw_exchange,
)

# Read timeouts for the slow tests' server (settings the server reads from the environment;
# ignored by a server without them). Protocol cases wait longer than this, then call it a hang.
SERVER_READ_TIMEOUT_S = 2
API_KEY = "fuzz-test-key"  # the fuzz server requires it: every case goes through the key check
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROTOCOL_WAIT_S = 6.0
SCORING = {"/v1/rank", "/v1/score", "/v1/rerank", "/v2/rerank"}  # at least these
INFO = {"/health", "/ready", "/v1/models", "/metrics"}


# ---- fast --------------------------------------------------------------------------------------


def test_cases_are_well_formed():
    names = [c.name for c in JSON_CASES] + [c.name for c in PROTOCOL_CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for c in JSON_CASES:
        assert c.method in ("GET", "POST") and c.path.startswith("/"), c.name
        assert c.expect and all(400 <= s < 500 or s == 200 for s in c.expect), c.name
    covered = " ".join(names)
    for topic in ("vocab", "negative", "nul", "surrogate", "100k", "nested", "top-k", "top-n",
                  "over-limit", "content-type", "lying-content-length", "endless"):  # fmt: skip
        assert topic in covered, f"no hostile case about {topic}"
    over = next(c for c in JSON_CASES if c.name == "rank-body-far-over-limit")
    assert len(over.body) > 4 * hostile.BODY_LIMIT


@pytest.mark.parametrize(
    "status, ctype, body, ok",
    [
        (422, "application/json", b'{"error": {"type": "x", "message": "y"}}', True),
        (422, "text/plain", b"Internal Server Error", False),
        (400, "application/json", b'{"detail": "x"}', False),
        (404, "application/json", b'{"error": {"type": "x", "message": 3}}', False),
        (413, None, b"", False),
    ],
)
def test_error_shape(status, ctype, body, ok):
    assert (error_shape_problem(status, ctype, body) is None) == ok


def test_json_case_names_its_field():
    case = next(c for c in JSON_CASES if c.name == "rank-top-k-negative")
    ok = b'{"error": {"type": "invalid_request", "message": "top_k: must be >= 1"}}'
    vague = b'{"error": {"type": "invalid_request", "message": "bad request"}}'
    assert json_case_problem(case, 422, "application/json", ok) is None
    assert "top_k" in json_case_problem(case, 422, "application/json", vague)
    assert "got 500" in json_case_problem(case, 500, "application/json", ok)


def test_scoring_endpoints_are_the_schemas_scoring_routes():
    from loadtest.fuzz import scoring_paths
    from server.app import create_app
    from server.settings import ServerSettings
    from tests.fake_engine import FakeEngine

    settings = ServerSettings()
    paths = scoring_paths(create_app(settings, FakeEngine(settings)).openapi())
    assert SCORING <= paths and not paths & INFO, paths


@pytest.fixture
def tcp_server():
    """A listening socket whose behaviour per connection the test sets: answer, close, or hold."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(5)
    mode = {"value": "answer"}
    conns = []

    def serve():
        try:
            while True:
                conn, _ = srv.accept()
                conns.append(conn)
                conn.recv(65536)
                if mode["value"] == "answer":
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno")
                elif mode["value"] == "close":
                    conn.close()
        except OSError:
            return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], mode
    srv.close()
    for c in conns:
        c.close()


@pytest.mark.parametrize("mode", ["answer", "close", "hold"])
def test_raw_exchange(tcp_server, mode):
    port, m = tcp_server
    m["value"] = mode
    t0 = time.perf_counter()
    res = raw_exchange("127.0.0.1", port, [b"POST / HTTP/1.1\r\n", b"x" * 10] * 100, 0.05, 1.0)
    assert time.perf_counter() - t0 < 3, "raw_exchange must stop at its wait"
    if mode == "answer":
        assert res.status == 400 and res.body == b"no" and not res.sent_all
    elif mode == "close":
        assert res.closed and res.status is None and not res.hung
    else:
        assert res.hung and res.seconds == pytest.approx(1.0, abs=0.5)


# ---- slow: a real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tiny_demo, tmp_path_factory):
    from tests.serving import ServerProcess

    env = {
        "SLIMRANK_HEADER_TIMEOUT_S": str(SERVER_READ_TIMEOUT_S),
        "SLIMRANK_BODY_TIMEOUT_S": str(SERVER_READ_TIMEOUT_S),
        "SLIMRANK_API_KEYS": API_KEY,
    }
    with ServerProcess(tiny_demo / "teacher", "torch", tmp_path_factory.mktemp("fuzz"), env) as srv:
        yield srv


@pytest.mark.slow
def test_seeded_fuzz_run(fuzz_server):
    from loadtest.fuzz import alive, fuzz_schema

    stats = fuzz_schema(fuzz_server.url, max_examples=30, seed=0, api_key=API_KEY, progress=False)
    scoring = {label.split()[1] for label, st in stats.items() if st.scoring}
    others = {label.split()[1] for label, st in stats.items() if not st.scoring}
    assert SCORING <= scoring and INFO <= others, (scoring, others)
    for label, st in stats.items():
        s = st.summary()
        assert s["5xx"] == 0 and s["transport_errors"] == 0, (label, s["failures"])
        assert s["shape_violations"] == 0, (label, s["failures"])
        if st.scoring:
            assert s["requests"] >= 30 and s["by_class"].get("4xx", 0) > 0, (label, s)
    assert alive(fuzz_server.url)


@pytest.mark.slow
@pytest.mark.parametrize("case", JSON_CASES, ids=lambda c: c.name)
def test_hostile_request(fuzz_server, case):
    (row,) = hostile.run_json_cases(fuzz_server.url, [case], headers=AUTH)
    assert row["ok"], row["problem"]


@pytest.mark.slow
@pytest.mark.parametrize("case", PROTOCOL_CASES, ids=lambda c: c.name)
def test_protocol_case(fuzz_server, case):
    (row,) = hostile.run_protocol_cases(
        "127.0.0.1", fuzz_server.port, [case], PROTOCOL_WAIT_S, headers=AUTH
    )
    assert row["ok"], row["problem"]


@pytest.mark.slow
def test_fuzz_server_refuses_requests_without_its_key(fuzz_server):
    import httpx

    for path in (*sorted(SCORING), "/v1/models", "/metrics"):
        r = httpx.request("GET" if path[-1] in "sl" else "POST", fuzz_server.url + path, json={})
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized", path


@pytest.mark.slow
def test_server_alive_after_hostile_input(fuzz_server):
    from loadtest.fuzz import alive

    # runs after the cases above in file order; on its own it is a plain liveness check
    assert alive(fuzz_server.url)
    assert fuzz_server.proc.poll() is None
