"""The load tester: its numbers on known inputs, then real runs against a real local server
(tiny demo teacher, torch engine): the rate is honoured, errors are counted by type and agree
with the server's own counters, runs stop by themselves; sweep and compare produce their files."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from prometheus_client import generate_latest

from loadtest import promscrape
from loadtest.__main__ import main as cli
from loadtest.client import RunConfig, arrival_times, run
from loadtest.stats import histogram_quantile, percentiles
from loadtest.sweep import plot_sweep, rate_list, sweep
from loadtest.workload import RequestPool, Workload, WorkloadError
from server.metrics import ServerMetrics
from tests.serving import REPO, ServerProcess


# ---- percentiles: numpy "linear" (Hyndman-Fan type 7), checked on hand-computed values ---------
def test_percentiles_known_sample():
    p = percentiles(range(1, 101))  # 1..100: position q*(n-1) -> 1 + 0.99*99 = 99.01
    assert p == pytest.approx({"p50": 50.5, "p90": 90.1, "p95": 95.05, "p99": 99.01, "max": 100})
    assert percentiles([4, 1, 3, 2], (50, 25))["p50"] == 2.5  # unsorted input
    assert percentiles([4, 1, 3, 2], (25,))["p25"] == 1.75
    assert percentiles([7.0])["p99"] == 7.0
    assert all(math.isnan(v) for v in percentiles([]).values())


# ---- PromQL histogram_quantile on hand-made buckets ------------------------------------------------
BUCKETS = [(0.1, 10), (0.2, 30), (0.5, 40), (math.inf, 40)]  # cumulative counts


@pytest.mark.parametrize(
    "q, want",
    [
        (0.25, 0.1),  # rank 10: top of the first bucket
        (0.5, 0.15),  # rank 20: 10 of the 20 in (0.1, 0.2]
        (0.99, 0.488),  # rank 39.6: 9.6 of the 10 in (0.2, 0.5]
        (0.1, 0.04),  # rank 4 in the first bucket, interpolated from 0
        (0.0, 0.0),
    ],
)
def test_histogram_quantile_like_promql(q, want):
    assert histogram_quantile(q, BUCKETS) == pytest.approx(want)


def test_histogram_quantile_edges():
    assert histogram_quantile(0.9, [(0.1, 5), (0.5, 10), (math.inf, 20)]) == 0.5  # in +Inf
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0), (math.inf, 0)]))  # no observations
    assert math.isnan(histogram_quantile(0.5, [(0.1, 3)]))  # no +Inf bucket
    assert histogram_quantile(1.5, BUCKETS) == math.inf
    assert histogram_quantile(-1, BUCKETS) == -math.inf


def test_server_percentiles_from_scrape_deltas():
    """Bucket deltas of the server's real metrics: only the observations between scrapes."""
    m = ServerMetrics()
    teacher, student = m.request_prefill.labels("r", "teacher"), m.request_prefill.labels("r", "s")
    for v in (0.001, 0.3, 0.3):  # before the run: must not count
        teacher.observe(v)
    before = promscrape.parse(generate_latest(m.registry).decode())
    for v in [0.004] * 10 + [0.015] * 20 + [0.04] * 10:  # buckets (2,5] (10,20] (35,50] ms
        (teacher if v < 0.01 else student).observe(v)  # every version's series count
    m.requests.labels("/v1/rank", "200", "r", "teacher").inc(30)
    m.requests.labels("/v1/rank", "200", "r", "s").inc(8)
    m.requests.labels("/v1/rank", "429", "", "").inc(2)
    after = promscrape.parse(generate_latest(m.registry).decode())
    h = promscrape.histogram_ms(before, after, promscrape.PREFILL)
    assert h["count"] == 40
    # rank 20 of 40: 10 of the 20 in (10, 20] ms -> 15 ms; rank 36: 6 of 10 in (35, 50] -> 44
    assert h["p50"] == pytest.approx(15.0) and h["p90"] == pytest.approx(44.0)
    rep = promscrape.server_report(before, after)
    assert rep["requests_by_status"] == {"200": 38, "429": 2}


# ---- the Poisson schedule ------------------------------------------------------------------------
def test_poisson_schedule():
    t = arrival_times(50, 200, seed=3)
    assert np.array_equal(t, arrival_times(50, 200, seed=3))  # seeded: repeatable
    assert t.min() > 0 and t.max() < 200 and np.all(np.diff(t) > 0)
    n = len(t)
    assert abs(n - 10000) < 4 * math.sqrt(10000)  # Poisson count: mean = var = rate * duration
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV = 1
    assert len(arrival_times(50, 200, max_requests=7)) == 7
    c = arrival_times(4, 2, arrivals="constant")
    assert np.allclose(c, [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75])
    with pytest.raises(ValueError):
        RunConfig(url="http://x", rate=-1, duration_s=1)


# ---- workload --------------------------------------------------------------------------------------
def test_workload_files_and_errors(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("items: 7\nendpoint: rerank\n")
    assert Workload.from_file(f, items=9).items == 9  # flags win over the file
    assert Workload.from_file(f).endpoint == "rerank"
    with pytest.raises(WorkloadError, match="not found"):
        Workload.from_file(tmp_path / "missing.json")
    f.write_text("itemz: 7\n")
    with pytest.raises(WorkloadError, match="unknown workload fields"):
        Workload.from_file(f)
    with pytest.raises(WorkloadError, match="invalid_share"):
        Workload(invalid_share=2)


def test_workload_bodies(tiny_demo):
    tok = str(tiny_demo / "teacher")
    w = Workload(tokenizer=tok, query_tokens=40, items=6, item_tokens=12, distinct=3)
    pool = RequestPool(w)
    assert len(pool.pairs) == 3 and all(len(items) == 6 for _, items in pool.pairs)
    assert pool.lengths["query_tokens"] >= 40
    assert pool.lengths["item_tokens"] == pytest.approx(12, abs=1)
    body = json.loads(pool.bodies[0])
    assert set(body) == {"query", "items"}
    seq = RequestPool(Workload(tokenizer=tok, query_tokens=20, items=2, invalid_share=0.25))
    reqs = seq.sequence(40)
    assert sum(not r.valid for r in reqs) == 10
    assert json.loads(next(r for r in reqs if not r.valid).body)["items"] == []
    demo = RequestPool(
        Workload(
            source="demo", data=str(tiny_demo / "data"), tokenizer=tok, items=15, endpoint="rerank"
        )
    )
    assert set(json.loads(demo.bodies[0])) == {"query", "documents"}
    assert len(demo.pairs[0][1]) == 15  # topped up beyond the query's own candidates


# ---- CLI input errors --------------------------------------------------------------------------
def test_cli_bad_input(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli(["run", "--url", "http://127.0.0.1:9", "--rate", "-2", "--duration", "1"])
    assert e.value.code == 2 and "must be > 0" in capsys.readouterr().err
    args = ["run", "--url", "http://127.0.0.1:9", "--rate", "1", "--duration", "1"]
    assert cli([*args, "--workload", str(tmp_path / "nope.yaml")]) == 2
    assert "workload file not found" in capsys.readouterr().err
    assert cli(["sweep", "--url", "http://127.0.0.1:9", "--duration", "1", "--slo-p99-ms", "5",
                "--rates", "1,x"]) == 2  # fmt: skip
    assert cli(["compare", "--model", str(tmp_path / "no-model"), "--items", "2"]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_compare_turns_share_the_requests_and_rotate():
    """Rows measured in turns: every request index once per row, in rounds as even as they
    go, and no row always after the same one."""
    from loadtest.compare import turn_order, turn_sizes

    assert turn_sizes(12, 4) == [3, 3, 3, 3]
    assert turn_sizes(10, 4) == [3, 3, 2, 2]
    assert turn_sizes(3, 4) == [1, 1, 1]  # never an empty turn
    assert turn_sizes(5, 1) == [5]
    keys = ["a", "b", "c"]
    orders = [turn_order(keys, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert {o[0] for o in orders} == set(keys)  # each row leads one round
    assert turn_order([], 2) == []
    with pytest.raises(SystemExit):
        cli(["compare", "--model", "x", "--rounds", "0"])


def test_offline_turns_cycle_from_their_start():
    """``run_requests`` from an index: the same request sequence as the servers' turns."""
    from loadtest.offline import run_requests
    from ranking.request import EncodedRequest

    reqs = [EncodedRequest([1], [[2]] * k) for k in (1, 2, 3)]
    seen: list[int] = []
    t = run_requests(lambda group: seen.extend(r.n_items for r in group), reqs, 4, 2, start=2)
    assert seen == [3, 1, 2, 3] and t.n == 4 and t.items == 9 and len(t.lat_ms) == 4
    assert t.summary(2)["items_per_s"] > 0


def test_rate_list():
    assert rate_list("4,1,2", None, None, None) == [1, 2, 4]
    assert rate_list(None, 1, 2, 0.5) == [1, 1.5, 2]
    with pytest.raises(ValueError):
        rate_list("0,1", None, None, None)


# ---- against servers that do not answer -----------------------------------------------------------
def test_hard_stop_counts_unfinished_requests(tiny_demo):
    """A server that accepts connections and never answers: the run still ends at
    duration + grace, every request is a failure, in flight ('not_completed') or never sent."""
    pool = RequestPool(Workload(tokenizer=str(tiny_demo / "teacher"), query_tokens=20, items=2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)  # the kernel completes handshakes; nobody ever reads
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        cfg = RunConfig(url, rate=20, duration_s=1.0, timeout_s=30, grace_s=0.5, max_in_flight=3,
                        progress=False, scrape_metrics=False, arrivals="constant")  # fmt: skip
        t = time.perf_counter()
        summary = run(cfg, pool).summary()
        wall = time.perf_counter() - t
    assert wall < 1.5 + 1.0
    assert summary["requests"]["scheduled"] == 20 and summary["requests"]["ok"] == 0
    assert summary["errors"] == {"not_completed": 3, "not_sent": 17}


def test_connection_refused_is_counted(tiny_demo):
    pool = RequestPool(Workload(tokenizer=str(tiny_demo / "teacher"), query_tokens=20, items=2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        cfg = RunConfig(f"http://127.0.0.1:{port}", rate=20, duration_s=0.5, progress=False)
        summary = run(cfg, pool).summary()
    assert summary["errors"] == {"connect_error": summary["requests"]["scheduled"]}
    assert summary["server"] is None


# ---- a real server (slow: one server process for these tests) -------------------------------
@pytest.fixture(scope="module")
def server(tiny_demo, tmp_path_factory):
    """Torch engine; a queue of 64 items, so two 60-item requests at once overflow it (429).
    The expected-wait bound is set out of the way (the item cap alone decides), and the server
    requires an API key, which the load tester sends."""
    with ServerProcess(
        tiny_demo / "teacher",
        "torch",
        tmp_path_factory.mktemp("logs"),
        max_queue_items=64,
        max_expected_latency_ms=60_000,
        api_key=KEY,
    ) as s:
        yield s


KEY = "loadtest-key"


def small(tiny_demo, **kw) -> RequestPool:
    w = dict(tokenizer=str(tiny_demo / "teacher"), query_tokens=40, items=4, distinct=4)
    return RequestPool(Workload(**{**w, **kw}))


@pytest.mark.slow
def test_rate_is_honoured_and_run_stops_by_itself(server, tiny_demo):
    cfg = RunConfig(
        server.url, rate=8, duration_s=5, slo_ms=5000, progress=False, seed=1, api_key=KEY
    )
    t = time.perf_counter()
    s = run(cfg, small(tiny_demo)).summary()
    wall = time.perf_counter() - t
    req = s["requests"]
    assert req["scheduled"] == len(arrival_times(8, 5, seed=1))
    assert req["sent"] == req["ok"] == req["scheduled"] and not s["errors"]
    # the Poisson draw is within 3 sigma of 40 requests, and the client sent on schedule
    assert abs(req["scheduled"] - 40) <= 3 * math.sqrt(40)
    assert s["achieved_rate"] == pytest.approx(s["schedule_rate"])
    assert s["send_lag_ms"]["p99"] < 100
    assert wall < 5 + 5  # stops by itself: duration + the last responses + scrapes
    # the server saw exactly these requests, and its prefill histogram is reported
    assert s["server"]["requests_by_status"] == {"200": req["sent"]}
    assert s["server"]["prefill_ms"]["count"] == req["ok"]
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert s["slo"]["goodput"] == 1.0 and s["slo"]["meets_slo"]
    assert s["items_per_s"] == pytest.approx(req["ok"] * 4 / s["elapsed_s"])


@pytest.mark.slow
def test_errors_are_counted_by_type(server, tiny_demo):
    """Invalid bodies (422) and overload (429) counted by type, equal to the server's counts."""
    cfg = RunConfig(
        server.url, rate=10, duration_s=2, progress=False, arrivals="constant", api_key=KEY
    )
    s = run(cfg, small(tiny_demo, invalid_share=0.25)).summary()
    assert s["errors"] == {"http_422:invalid_request": 5}
    assert s["server"]["requests_by_status"] == {"200": 15, "422": 5}
    assert s["slo"] is None
    # a burst of 60-item requests into a 64-item queue
    burst = RunConfig(
        server.url, rate=200, duration_s=0.5, progress=False, slo_ms=10000, api_key=KEY
    )
    s = run(burst, small(tiny_demo, items=60, distinct=1)).summary()
    n429 = s["errors"].get("http_429:overloaded", 0)
    assert n429 > 0, s["errors"]
    assert s["server"]["requests_by_status"].get("429") == n429
    assert s["requests"]["ok"] + n429 == s["requests"]["scheduled"]
    assert s["slo"]["goodput"] <= s["requests"]["ok"] / s["requests"]["scheduled"]
    # too short a client timeout: 'timeout', not a crash
    quick = RunConfig(
        server.url, rate=10, duration_s=0.5, timeout_s=0.0005, progress=False, api_key=KEY
    )
    s = run(quick, small(tiny_demo)).summary()
    assert s["errors"].get("timeout", 0) >= 1


@pytest.mark.slow
def test_sweep_writes_json_and_png(server, tiny_demo, tmp_path):
    base = RunConfig(server.url, rate=1, duration_s=1.5, slo_ms=5000, progress=False, api_key=KEY)
    rep = sweep(base, small(tiny_demo), [2, 4], settle_s=0, verbose=False)
    assert [p["offered_rate"] for p in rep["points"]] == [2, 4]
    assert rep["max_rate_meeting_slo"] == 4 and rep["stopped_early"] is None
    png = plot_sweep(rep, tmp_path / "sweep.png")
    assert png.stat().st_size > 10_000
    # an impossible SLO is clearly broken at the first rate: the sweep stops there
    tight = RunConfig(server.url, rate=1, duration_s=1, slo_ms=0.01, progress=False, api_key=KEY)
    rep = sweep(tight, small(tiny_demo), [2, 4, 8], settle_s=0, verbose=False)
    assert len(rep["points"]) == 1 and rep["stopped_early"] and rep["max_rate_meeting_slo"] is None


@pytest.mark.slow
def test_cli_run_prints_table_and_json(server, tiny_demo, tmp_path):
    out = tmp_path / "run.json"
    r = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "--url", server.url + "/v1/rerank",
         "--rate", "5", "--duration", "2", "--slo-p99-ms", "5000", "--no-progress",
         "--tokenizer", str(tiny_demo / "teacher"), "--query-tokens", "30", "--items", "3",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SLIMRANK_API_KEY": KEY},  # the key from the environment
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "goodput" in r.stdout and "server prefill" in r.stdout  # /metrics scraped with the key
    assert KEY not in out.read_text()  # the report never holds the key
    rep = json.loads(out.read_text())
    assert rep["workload"]["endpoint"] == "rerank" and rep["config"]["path"] == "/v1/rerank"
    assert rep["requests"]["ok"] == rep["requests"]["scheduled"] > 0
    assert set(rep["latency_ms"]) == {"p50", "p90", "p95", "p99", "max"}


# ---- compare: six engines on the tiny model, the peer (vLLM's own server) included -----------
@pytest.mark.slow
def test_compare_all_engines(tiny_demo, tmp_path):
    out = tmp_path / "compare.json"
    r = subprocess.run(
        [sys.executable, "-m", "loadtest", "compare", "--model", str(tiny_demo / "teacher"),
         "--requests", "3", "--warmup", "1", "--query-tokens", "40", "--items", "6",
         "--distinct", "2", "--no-progress", "--log-dir", str(tmp_path), "--json", str(out),
         "--sweep-duration", "2", "--sweep-factors", "0.5,1"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads(out.read_text())
    rows = rep["results"]
    assert [x["engine"] for x in rows] == [
        "server-torch",
        "server-vllm",
        "vllm-serve",
        "torch-inprocess",
        "vllm-offline",
        "transformers",
    ]
    for x in rows:
        assert {"model", "engine", "items_per_s", "p50_ms", "p99_ms"} <= set(x)
        assert x["items_per_s"] > 0 and 0 < x["p50_ms"] <= x["p99_ms"], x
        assert x["model"] == str(tiny_demo / "teacher") and "error" not in x
        assert x["useful_gflops"] > 0
    by = {x["engine"]: x for x in rows}
    # the light rows were measured together in turns: 3 requests, one per round
    assert rep["in_turns"] == ["server-torch", "torch-inprocess"] and rep["rounds"] == 3
    assert by["server-torch"]["rounds"] == by["torch-inprocess"]["rounds"] == 3
    assert "rounds" not in by["vllm-serve"] and by["server-torch"]["kernel"]
    for e in ("server-torch", "server-vllm", "vllm-serve"):  # every server row was swept
        assert by[e]["sweep"]["rates"] and by[e]["sweep"]["points"], e
    # the peer scored the same token sequences: same scores up to bf16 kernel differences
    assert by["vllm-serve"]["score_diff_vs"] == "server-torch"
    assert by["vllm-serve"]["max_abs_score_diff"] < 0.05
    assert by["server-vllm"]["max_abs_score_diff"] < 0.05
    assert "--enable-prefix-caching" in by["vllm-serve"]["flags"]
    work = rep["useful_work"][str(tiny_demo / "teacher")]
    assert work["peak_gflops"] > 0 and work["gflop_per_request"] > 0
    assert "vs naive" in r.stdout and "vllm-serve flags:" in r.stdout
    assert "our best (" in r.stdout and "GFLOP/s" in r.stdout
    assert "measured together, in turns over 3 rounds" in r.stdout
    assert "the server path (HTTP, JSON, tokenization, scheduling) costs" in r.stdout


def test_vllm_threads_bound_to_every_allowed_core(monkeypatch):
    """vLLM-CPU's ``auto`` binding keeps a core for its scheduler; our engine and the peer bind
    their compute threads to every core this process may use (or OMP_NUM_THREADS of them)."""
    from loadtest.peer import peer_env
    from server.engines.vllm_engine import cpu_threads_bind

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {2, 3, 4, 5})
    assert cpu_threads_bind() == "2-5"
    assert peer_env()["VLLM_CPU_OMP_THREADS_BIND"] == "2-5"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads_bind() == "2-3"
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 2, 7})
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads_bind() == "0,2,7"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    assert peer_env()["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"  # the user's value wins
