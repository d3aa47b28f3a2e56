"""Fault scenarios against a real server: ``python -m loadtest chaos SCENARIO --json OUT``.

Each scenario starts its own server (``ServerProcess``, loopback only), drives it with the
open-loop runner of ``loadtest.client``, injects its fault, judges the outcome itself (a list of
checks, each with its reason) and stops by itself: every phase is bounded in time and request
count. The report (a table and JSON) holds, per scenario: requests sent, by status, 5xx,
connection errors (refused or reset), lost (sent and never answered: timeouts, or still open at
the hard stop), admitted (200) latency p50/p99, the checks and the verdict.

- ``overload``: capacity from a short rate sweep (the highest rate meeting the SLO), then 3x
  that rate, with the shipped settings. Admitted requests keep p99 within the SLO, the rest get
  429 with ``Retry-After``, 0 5xx, 0 connection errors, and latency is back to the unloaded
  level within 5 s of the burst's end.
- ``drain``: steady load at ~70 % of capacity, then SIGTERM. Requests admitted before it end in
  200; later ones get a 503 in the error shape with ``Connection: close`` (never a refused or
  reset connection), ``/ready`` turns 503, and the server exits after its drain window and
  within its grace period. 0 lost.
- ``engine-fault``: the server's test-only fault switch (``SLIMRANK_FAULT_BATCHES=N``: the N-th
  engine batch after ready raises) fails one batch: only its request gets a 5xx of type
  ``engine_error``, every later one succeeds. With ``--engine vllm`` the engine-core process
  is also killed: ``/health`` and ``/ready`` must go unhealthy, and in-flight and new requests
  get a 503 at once instead of hanging.
- ``slow-clients``: hundreds of idle, header-trickling and body-trickling connections next to
  normal traffic. Normal clients all get 200 within the SLO, and the server closes every slow
  connection within its header / body read timeout.

Timeouts and windows the scenarios rely on are passed to the server as environment variables
(``SLIMRANK_DRAIN_WINDOW_S``, ``SLIMRANK_HEADER_TIMEOUT_S``, ``SLIMRANK_BODY_TIMEOUT_S``,
``SLIMRANK_FAULT_BATCHES``), so ``--short`` can shrink them; a server without those settings
ignores them, and the scenario then fails on the behaviour they control.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtest.client import Outcome, RunConfig, open_loop
from loadtest.hostile import ITEMS, QUERY
from loadtest.stats import fmt, percentiles, table
from loadtest.workload import DEFAULT_MODEL, RequestPool, Workload
from server.process import ServerProcess

SCENARIOS = ("overload", "drain", "engine-fault", "slow-clients")
CONNECTION_ERRORS = ("connect_error", "transport_error")
CLEAN_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled once it is done
# the scenarios' servers accept one key, made per run; every client here sends it
RUN_KEY = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {RUN_KEY}"}
REQUEST_TIMEOUT_S = 30.0  # the server's default request deadline: nothing may take longer
LADDER_STEPS = 16  # capacity sweep: start, x1.5, x1.5^2, ... (start from the unloaded latency)


@dataclass(frozen=True)
class ChaosConfig:
    model: str = DEFAULT_MODEL
    engine: str = "torch"
    short: bool = False  # the test-sized form: seconds, not minutes
    slo_ms: float = 500.0
    seed: int = 0
    log_dir: str | None = None
    items: int = 50  # items per request (the load tester's default workload)
    progress: bool = True

    def pick(self, full, short):
        return short if self.short else full


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    scenario: str
    config: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    tallies: dict[str, dict] = field(default_factory=dict)  # phase -> tally(...)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        failed = [c for c in self.checks if not c.ok]
        return {
            "scenario": self.scenario,
            "passed": self.passed,
            "reason": "; ".join(f"{c.name}: {c.detail}" for c in failed)
            if failed
            else "every check passed",
            "checks": [asdict(c) for c in self.checks],
            "requests": self.tallies,
            "config": self.config,
            "seconds": round(self.seconds, 1),
            **self.extra,
        }


# ---- counting -------------------------------------------------------------------------------------


# a request sent less than this before SIGTERM may reach the server after it (drain scenario)
IN_FLIGHT_S = 0.5


def tally(outcomes: list[Outcome]) -> dict[str, Any]:
    """Requests sent, by status, 5xx, connection errors, lost, admitted p50/p99 (ms)."""
    sent = [o for o in outcomes if o.sent_s is not None]
    by_status = Counter(str(o.status) for o in sent if o.status is not None)
    conn = [o for o in sent if o.error and o.error.split(":")[0] in CONNECTION_ERRORS]
    lost = [o for o in sent if o.status is None and o not in conn]
    admitted = percentiles([o.latency_s * 1000 for o in sent if o.status == 200], (50, 99))
    return {
        "sent": len(sent),
        "not_sent": len(outcomes) - len(sent),
        "by_status": dict(sorted(by_status.items())),
        "5xx": sum(v for k, v in by_status.items() if k.startswith("5")),
        "connection_errors": len(conn),
        "lost": len(lost),
        "admitted_p50_ms": admitted["p50"],
        "admitted_p99_ms": admitted["p99"],
    }


def _error_type(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


# ---- the server -----------------------------------------------------------------------------------


@contextmanager
def server(cfg: ChaosConfig, env: dict[str, str] | None = None, **settings) -> Iterator:
    """A fresh server for one scenario, with ``env`` added to its environment. Stopped (SIGTERM,
    then SIGKILL) on exit whatever happened."""
    log_dir = Path(cfg.log_dir) if cfg.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    env = {"SLIMRANK_API_KEYS": RUN_KEY, **(env or {})}  # every scenario runs with keys on
    srv = ServerProcess(Path(cfg.model), cfg.engine, log_dir, env, **settings)
    try:
        srv.start(timeout=600)
    except BaseException:
        srv.stop()
        raise
    try:
        yield srv
    finally:
        srv.stop(timeout=REQUEST_TIMEOUT_S + 30)


def _pool(cfg: ChaosConfig) -> RequestPool:
    return RequestPool(Workload(tokenizer=cfg.model, items=cfg.items, seed=cfg.seed))


def _run_config(cfg: ChaosConfig, url: str, rate: float, duration: float, **kw) -> RunConfig:
    base = dict(
        url=url,
        rate=rate,
        duration_s=duration,
        slo_ms=cfg.slo_ms,
        max_requests=int(rate * duration * 1.5) + 10,
        max_in_flight=1024,
        timeout_s=REQUEST_TIMEOUT_S + 5,
        seed=cfg.seed,
        progress=False,
        scrape_metrics=False,
        api_key=RUN_KEY,
    )
    return RunConfig(**{**base, **kw})


def unloaded_latency(url: str, pool: RequestPool, n: int) -> dict[str, float]:
    """p50/p99 (ms) of ``n`` requests sent one at a time: the latency floor."""
    lat = []
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, headers=AUTH) as c:
        for req in pool.sequence(n):
            t = time.perf_counter()
            r = c.post(
                pool.workload.path, content=req.body, headers={"content-type": "application/json"}
            )
            if r.status_code == 200:
                lat.append((time.perf_counter() - t) * 1000)
    return percentiles(lat, (50, 99))


def measure_capacity(
    cfg: ChaosConfig, url: str, pool: RequestPool, unloaded: dict[str, float]
) -> dict[str, Any]:
    """The highest rate meeting the SLO, from a short sweep (``loadtest.sweep.sweep``): rates
    rising by 1.5x from half what one request at a time would reach (``unloaded`` p50), a short
    constant-rate run each (at least 3 requests), stopping at the first miss. When not even
    the first rate meets the SLO (a machine too slow for it), the highest throughput seen."""
    from loadtest.sweep import sweep

    p50 = unloaded["p50"] if not math.isnan(unloaded["p50"]) else 1000.0
    start = max(0.05, 0.5 * 1000.0 / p50)
    ladder = [start * 1.5**k for k in range(LADDER_STEPS)]
    step = max(cfg.pick(4.0, 1.5), 3 / start)
    base = _run_config(cfg, url, start, step, timeout_s=10.0, arrivals="constant")
    rep = sweep(base, pool, ladder, broken_goodput=1.0, patience=1, settle_s=0.5, verbose=False)
    best = rep["max_rate_meeting_slo"]
    throughput = max(p["throughput_rps"] for p in rep["points"])
    return {
        "capacity_rps": best if best is not None else max(throughput, start / 2),
        "slo_met_at_first_rate": best is not None,
        "sweep": [
            {
                "rate": p["offered_rate"],
                "throughput_rps": p["throughput_rps"],
                "p99_ms": p["latency_ms"]["p99"],
                "goodput": p["slo"]["goodput"],
            }
            for p in rep["points"]
        ],
    }


def _say(cfg: ChaosConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[chaos] {msg}", flush=True)


# ---- overload -------------------------------------------------------------------------------------


async def _probe(url: str, path: str, body: bytes, start_s: float, window_s: float, gap_s: float):
    """After ``start_s``, one request at a time every ``gap_s`` for ``window_s``: a list of
    (seconds after start_s, status or None, latency ms)."""
    await asyncio.sleep(start_s)
    t0 = time.perf_counter()
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, headers=AUTH) as c:
        while time.perf_counter() - t0 < window_s:
            t = time.perf_counter()
            try:
                r = await c.post(path, content=body, headers={"content-type": "application/json"})
                status = r.status_code
            except httpx.HTTPError:
                status = None
            out.append((round(t - t0, 3), status, (time.perf_counter() - t) * 1000))
            await asyncio.sleep(max(0.0, gap_s - (time.perf_counter() - t)))
    return out


def recovery_seconds(
    probes: list[tuple[float, int | None, float]], limit_ms: float
) -> float | None:
    """Seconds after the burst from which every probe was a 200 within ``limit_ms``."""
    good_from = None
    for t, status, ms in probes:
        if status == 200 and ms <= limit_ms:
            good_from = t if good_from is None else good_from
        else:
            good_from = None
    return good_from


def overload(cfg: ChaosConfig) -> Report:
    rep = Report("overload", asdict(cfg))
    with server(cfg) as srv:
        pool = _pool(cfg)
        base = unloaded_latency(srv.url, pool, cfg.pick(20, 8))
        cap = measure_capacity(cfg, srv.url, pool, base)
        rate = 3 * cap["capacity_rps"]
        duration = cfg.pick(60.0, 5.0)
        recovery_window = cfg.pick(10.0, 6.0)
        _say(
            cfg,
            f"overload: capacity {cap['capacity_rps']:.1f} req/s, burst {rate:.1f} req/s for {duration:g}s",
        )
        rc = _run_config(cfg, srv.url, rate, duration)
        body = pool.sequence(1)[0].body

        async def both():
            return await asyncio.gather(
                open_loop(rc, pool, keep_headers=("retry-after",)),
                _probe(srv.url, pool.workload.path, body, duration, recovery_window, 0.25),
            )

        result, probes = asyncio.run(both())
    t = tally(result.outcomes)
    rep.tallies["burst"] = t
    limit = max(2 * base["p99"], base["p99"] + 50.0)
    rec = recovery_seconds(probes, limit)
    rep.extra.update(
        unloaded_ms=base,
        capacity=cap,
        burst_rate=rate,
        burst_seconds=duration,
        recovery={"limit_ms": limit, "seconds": rec, "probes": probes},
    )
    refused = [o for o in result.outcomes if o.status is not None and o.status != 200]
    not_429 = Counter(o.status for o in refused if o.status != 429)
    no_retry = [o for o in refused if o.status == 429 and not _retry_after_ok(o.headers)]
    p99 = t["admitted_p99_ms"]
    rep.check(
        "overloaded",
        t["by_status"].get("429", 0) > 0,
        f"{t['by_status'].get('429', 0)} requests got 429 at 3x capacity",
    )
    rep.check(
        "admitted p99 within SLO",
        not math.isnan(p99) and p99 <= cfg.slo_ms,
        f"p99 {fmt(p99)} ms vs SLO {cfg.slo_ms:g} ms",
    )
    rep.check(
        "refusals are 429",
        not not_429,
        f"other statuses: {dict(not_429)}" if not_429 else "all 429",
    )
    rep.check(
        "429 carries Retry-After", not no_retry, f"{len(no_retry)} 429s without a valid Retry-After"
    )
    rep.check("no 5xx", t["5xx"] == 0, f"{t['5xx']} 5xx")
    rep.check(
        "no connection errors",
        t["connection_errors"] == 0,
        f"{t['connection_errors']} refused/reset",
    )
    rep.check("nothing lost", t["lost"] == 0, f"{t['lost']} sent and never answered")
    rep.check(
        "recovers within 5 s",
        rec is not None and rec <= 5.0,
        f"latency back under {limit:.0f} ms after {fmt(rec)} s"
        if rec is not None
        else f"not back under {limit:.0f} ms within {recovery_window:g} s",
    )
    return rep


def _retry_after_ok(headers: dict | None) -> bool:
    value = (headers or {}).get("retry-after", "")
    return value.isdigit() and int(value) >= 1


# ---- drain ----------------------------------------------------------------------------------------


async def _watch_ready(url: str, proc, until: Callable[[], bool]) -> list[tuple[float, int | None]]:
    """``GET /ready`` every 0.1 s on a fresh connection until ``until()``: (time, status)."""
    out = []
    t0 = time.perf_counter()
    async with httpx.AsyncClient(
        timeout=1.0, limits=httpx.Limits(max_keepalive_connections=0)
    ) as c:
        while not until() and proc.poll() is None:
            try:
                status = (await c.get(url + "/ready")).status_code
            except httpx.HTTPError:
                status = None
            out.append((round(time.perf_counter() - t0, 3), status))
            await asyncio.sleep(0.1)
    return out


def drain(cfg: ChaosConfig) -> Report:
    rep = Report("drain", asdict(cfg))
    window = cfg.pick(5.0, 2.0)
    grace = window + REQUEST_TIMEOUT_S + 5
    env = {"SLIMRANK_DRAIN_WINDOW_S": str(window)}
    with server(cfg, env) as srv:
        pool = _pool(cfg)
        cap = measure_capacity(cfg, srv.url, pool, unloaded_latency(srv.url, pool, cfg.pick(20, 8)))
        before_s = cfg.pick(10.0, 3.0)
        after_s = 0.8 * window  # arrivals stop inside the drain window: the server is still up
        # ~70 % of capacity, but at least a few arrivals after the signal on a slow machine
        rate = max(0.7 * cap["capacity_rps"], 5 / after_s)
        _say(cfg, f"drain: {rate:.1f} req/s, SIGTERM after {before_s:g}s, window {window:g}s")
        rc = _run_config(cfg, srv.url, rate, before_s + after_s)
        proc = srv.proc
        marks: dict[str, float] = {}

        async def signal_later():
            await asyncio.sleep(before_s)
            marks["signal"] = time.perf_counter()
            proc.send_signal(signal.SIGTERM)

        async def scenario():
            marks["t0"] = time.perf_counter()
            ready_task = asyncio.create_task(
                _watch_ready(
                    srv.url, proc, lambda: time.perf_counter() - marks["t0"] > grace + before_s
                )
            )
            result, _ = await asyncio.gather(
                open_loop(rc, pool, keep_headers=("connection",)), signal_later()
            )
            return result, await ready_task

        result, ready = asyncio.run(scenario())
        deadline = marks["signal"] + grace
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.05)
        exit_after = time.perf_counter() - marks["signal"] if proc.poll() is not None else None
        code = proc.poll()
    sig = marks["signal"] - marks["t0"]
    before = [o for o in result.outcomes if o.sent_s is not None and o.sent_s < sig]
    after = [o for o in result.outcomes if o.sent_s is not None and o.sent_s >= sig]
    rep.tallies["before_signal"] = tally(before)
    rep.tallies["after_signal"] = tally(after)
    rep.tallies["all"] = tally(result.outcomes)
    ready_after = [(t - sig, s) for t, s in ready if t >= sig]
    rep.extra.update(
        capacity=cap,
        rate=rate,
        signal_at_s=sig,
        drain_window_s=window,
        grace_s=grace,
        exit_after_s=exit_after,
        exit_code=code,
        ready_after_signal=ready_after[:100],
    )
    tb, ta = rep.tallies["before_signal"], rep.tallies["after_signal"]

    def closing_503(o) -> bool:
        return (
            o.status == 503
            and (o.headers or {}).get("connection", "").lower() == "close"
            and (o.error or "").endswith(":shutting_down")
        )

    # A request sent just before the signal can reach the server after it: a closing 503 then
    # means the server never admitted it (nothing lost). Sent earlier than IN_FLIGHT_S, it was
    # on the server before the signal, and only a 200 (or an admission 429) is right.
    on_the_wire = [o for o in before if closing_503(o) and sig - o.sent_s < IN_FLIGHT_S]
    bad_before = [o for o in before if o.status not in (200, 429) and o not in on_the_wire]
    rep.extra["before_signal_on_the_wire_503"] = len(on_the_wire)
    rep.check(
        "admitted before the signal end in 200",
        not bad_before and tb["lost"] == 0 and tb["connection_errors"] == 0,
        f"statuses {tb['by_status']} ({len(on_the_wire)} sent < {IN_FLIGHT_S:g} s before the "
        f"signal got a closing 503), lost {tb['lost']}, connection errors "
        f"{tb['connection_errors']}",
    )
    wrong_after = [o for o in after if o.status != 200 and not closing_503(o)]
    rep.check(
        "after the signal: 503 shutting_down with Connection: close",
        not wrong_after and ta["sent"] > 0,
        f"{ta['sent']} sent after the signal, statuses {ta['by_status']}, {len(wrong_after)} neither a 200 nor a closing 503",
    )
    rep.check(
        "no refused or reset connection",
        ta["connection_errors"] == 0 and tb["connection_errors"] == 0,
        f"{ta['connection_errors'] + tb['connection_errors']} connection errors",
    )
    rep.check("nothing lost", rep.tallies["all"]["lost"] == 0, f"{rep.tallies['all']['lost']} lost")
    # inside the window /ready must answer 503; after it the listener is closed (refusals)
    late = [s for t, s in ready_after if 1.0 <= t < window - 0.2]
    rep.check(
        "/ready turns 503 within 1 s and stays so through the drain window",
        bool(late) and all(s == 503 for s in late),
        f"/ready in the window: {Counter(late)}; whole run after the signal: "
        f"{Counter(s for _, s in ready_after)}"
        if ready_after
        else "no /ready sample after the signal",
    )
    rep.check(
        "exits cleanly after the drain window, within the grace period",
        code in CLEAN_EXIT and exit_after is not None and window * 0.9 <= exit_after <= grace,
        f"exit code {code} after {fmt(exit_after)} s (window {window:g} s, grace {grace:g} s)",
    )
    return rep


# ---- engine fault -----------------------------------------------------------------------------------


def _engine_core(proc) -> Any | None:
    """vLLM's engine-core child process (a psutil.Process), if the server has one."""
    import psutil

    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            name = " ".join([child.name(), *child.cmdline()])
            if "EngineCore" in name or "engine_core" in name:
                return child
    except psutil.Error:
        return None
    return None


def _post(c: httpx.Client, body: dict) -> tuple[int | None, str | None, float]:
    t = time.perf_counter()
    try:
        r = c.post("/v1/rank", json=body)
        return r.status_code, _error_type(r.content), time.perf_counter() - t
    except httpx.HTTPError as exc:
        return None, type(exc).__name__, time.perf_counter() - t


def engine_fault(cfg: ChaosConfig) -> Report:
    rep = Report("engine-fault", asdict(cfg))
    fault_at = 3  # the third batch after ready
    n = cfg.pick(40, 12)
    body = {"query": QUERY, "items": ITEMS}
    rows = []
    # admission lifted: the engine-core kill below must find all its requests in flight
    env = {"SLIMRANK_FAULT_BATCHES": str(fault_at), "SLIMRANK_MAX_QUEUE_WAIT_MS": "60000"}
    with server(cfg, env) as srv:
        with httpx.Client(base_url=srv.url, timeout=REQUEST_TIMEOUT_S + 5, headers=AUTH) as c:
            for i in range(n):  # one at a time: each request is its own batch
                status, kind, dt = _post(c, body)
                rows.append({"i": i, "status": status, "type": kind, "ms": round(dt * 1000, 1)})
            health = c.get("/health").status_code
            ready = c.get("/ready").status_code
        if cfg.engine == "vllm":
            rep.extra["engine_death"] = _kill_engine_core(srv, body)
    outcomes = [
        Outcome(
            0.0,
            len(ITEMS),
            sent_s=0.0,
            done_s=r["ms"] / 1000 if r["status"] else None,
            status=r["status"],
            error=None if r["status"] == 200 else f"http_{r['status']}:{r['type']}",
        )
        for r in rows
    ]
    rep.tallies["requests"] = t = tally(outcomes)
    failed = [r for r in rows if r["status"] != 200]
    rep.extra["failed_requests"] = failed
    expected = [r for r in failed if r["i"] == fault_at - 1]
    rep.check(
        "the faulty batch fails with engine_error",
        len(expected) == 1
        and expected[0]["status"] >= 500
        and expected[0]["type"] == "engine_error",
        f"request #{fault_at} got {rows[fault_at - 1]['status']} {rows[fault_at - 1]['type']}",
    )
    others = [r for r in failed if r["i"] != fault_at - 1]
    rep.check(
        "every other request succeeds", not others, f"{len(others)} other failures: {others[:3]}"
    )
    rep.check("no connection errors", t["connection_errors"] == 0, f"{t['connection_errors']}")
    rep.check(
        "healthy after the fault",
        health == 200 and ready == 200,
        f"/health {health}, /ready {ready}",
    )
    death = rep.extra.get("engine_death")
    if death is not None:
        rep.check("engine-core death: unhealthy and 503 at once", death["ok"], death["detail"])
    return rep


def _kill_engine_core(srv, body: dict) -> dict[str, Any]:
    """Kills vLLM's engine-core process under in-flight load; /health, /ready and requests must
    turn 503 within 5 s instead of hanging until the request deadline."""
    from concurrent.futures import ThreadPoolExecutor

    core = _engine_core(srv.proc)
    if core is None:
        return {"ok": False, "detail": "no engine-core child process found"}
    with (
        httpx.Client(base_url=srv.url, timeout=REQUEST_TIMEOUT_S + 5, headers=AUTH) as c,
        ThreadPoolExecutor(8) as ex,
    ):
        inflight = [ex.submit(_post, c, {**body, "items": ITEMS * 50}) for _ in range(8)]
        time.sleep(0.2)
        core.kill()
        t0 = time.perf_counter()
        answered = [f.result() for f in inflight]
        new = [_post(c, body) for _ in range(3)]
        health = c.get("/health").status_code
        ready = c.get("/ready").status_code
    slow = [a for a in answered + new if a[2] > 5.0 or a[0] not in (200, 503)]
    ok = not slow and health != 200 and ready != 200 and all(s == 503 for s, _, _ in new)
    return {
        "ok": ok,
        "detail": f"in-flight {[a[0] for a in answered]}, new {[a[0] for a in new]}, /health {health}, "
        f"/ready {ready}, slowest {max(a[2] for a in answered + new):.1f} s after "
        f"{time.perf_counter() - t0:.1f} s",
    }


# ---- slow clients ---------------------------------------------------------------------------------


async def _slow_connection(host: str, port: int, kind: str, gap_s: float, stop_s: float) -> dict:
    """One slow client: ``idle`` sends nothing, ``headers`` trickles its header a byte at a time,
    ``body`` sends headers then trickles the body. Returns when the server closes or answers,
    or at ``stop_s``: when (seconds from connecting) and what it got."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return {"kind": kind, "closed_s": None, "status": None, "error": type(exc).__name__}
    head = (
        f"POST /v1/rank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {RUN_KEY}\r\n"
    )
    if kind == "headers":
        pending = (head + "Content-Length: 2\r\n").encode()
    elif kind == "body":
        writer.write((head + "Content-Length: 100000\r\n\r\n").encode())
        pending = b" " * 100_000
    else:
        pending = b""
    result = {"kind": kind, "closed_s": None, "status": None, "error": None}
    read = asyncio.create_task(reader.read(4096))
    try:
        while time.perf_counter() - t0 < stop_s:
            if pending:
                writer.write(pending[:1])
                pending = pending[1:]
                try:
                    await writer.drain()
                except (ConnectionError, OSError):
                    result["closed_s"] = time.perf_counter() - t0
                    break
            done, _ = await asyncio.wait(
                {read}, timeout=gap_s if pending else stop_s - (time.perf_counter() - t0)
            )
            if done:
                try:
                    data = read.result()
                except (ConnectionError, OSError):
                    data = b""
                if data.startswith(b"HTTP/"):
                    result["status"] = int(data.split()[1])
                result["closed_s"] = time.perf_counter() - t0
                break
    finally:
        read.cancel()
        writer.close()
    return result


def slow_clients(cfg: ChaosConfig) -> Report:
    rep = Report("slow-clients", asdict(cfg))
    header_timeout = body_timeout = cfg.pick(10.0, 2.0)
    counts = {"idle": cfg.pick(300, 60), "headers": cfg.pick(100, 20), "body": cfg.pick(100, 20)}
    env = {
        "SLIMRANK_HEADER_TIMEOUT_S": str(header_timeout),
        "SLIMRANK_BODY_TIMEOUT_S": str(body_timeout),
        # admission is the overload scenario's subject: lifted here, every normal request is
        # admitted, so starvation shows in its latency instead of hiding behind a 429
        "SLIMRANK_MAX_QUEUE_WAIT_MS": str(REQUEST_TIMEOUT_S * 1000),
    }
    slack = 2.0
    stop_s = header_timeout + body_timeout + 2 * slack
    with server(cfg, env) as srv:
        pool = _pool(cfg)
        base = unloaded_latency(srv.url, pool, cfg.pick(20, 8))
        # normal traffic well under capacity (half the one-at-a-time rate, at most 4 req/s): a
        # 429 here is overload, not starvation, and would hide what the scenario measures
        p50_s = base["p50"] / 1000 if base["p50"] > 0 else 1.0
        rate = min(cfg.pick(4.0, 3.0), 0.5 / p50_s)
        rc = _run_config(cfg, srv.url, rate, stop_s)
        _say(
            cfg,
            f"slow-clients: {sum(counts.values())} slow connections, {rate:g} req/s normal traffic for {stop_s:g}s",
        )

        async def scenario():
            slow = [
                asyncio.create_task(_slow_connection("127.0.0.1", srv.port, kind, 0.5, stop_s))
                for kind, k in counts.items()
                for _ in range(k)
            ]
            await asyncio.sleep(0.5)  # the slow connections are open before normal traffic
            normal = await open_loop(rc, pool)
            return normal, await asyncio.gather(*slow)

        normal, slow = asyncio.run(scenario())
        with httpx.Client(timeout=10) as c:
            alive = c.get(srv.url + "/health").status_code == 200
    rep.tallies["normal"] = t = tally(normal.outcomes)
    limit = {
        "idle": header_timeout,
        "headers": header_timeout,
        "body": header_timeout + body_timeout,
    }
    held = Counter(
        s["kind"] for s in slow if s["closed_s"] is None or s["closed_s"] > limit[s["kind"]] + slack
    )
    errors = Counter(s["error"] for s in slow if s["error"])
    rep.extra.update(
        unloaded_ms=base,
        normal_rate=rate,
        slow_connections=counts,
        timeouts_s={"header": header_timeout, "body": body_timeout},
        held_open_past_timeout=dict(held),
        slow_connect_errors=dict(errors),
        slow_answers=dict(Counter(str(s["status"]) for s in slow if s["status"] is not None)),
    )
    p99 = t["admitted_p99_ms"]
    bad = {k: v for k, v in t["by_status"].items() if k != "200"}
    rep.check("normal clients all get 200", not bad and t["sent"] > 0, f"statuses {t['by_status']}")
    # not starved: within the SLO, or on a machine too slow for it even unloaded, within 2x the
    # unloaded p99
    bound = max(cfg.slo_ms, 2 * base["p99"]) if not math.isnan(base["p99"]) else cfg.slo_ms
    rep.check(
        "normal clients not starved",
        not math.isnan(p99) and p99 <= bound,
        f"p99 {fmt(p99)} ms vs {bound:.0f} ms (SLO {cfg.slo_ms:g} ms, unloaded p99 "
        f"{fmt(base['p99'])} ms)",
    )
    rep.check(
        "no 5xx, connection errors or lost",
        t["5xx"] == 0 and t["connection_errors"] == 0 and t["lost"] == 0,
        f"5xx {t['5xx']}, connection errors {t['connection_errors']}, lost {t['lost']}",
    )
    rep.check(
        "slow connections closed within the read timeouts",
        not held,
        f"held open past the timeout + {slack:g} s: {dict(held)} of {counts}",
    )
    rep.check("every slow client got a connection", not errors, f"connect errors: {dict(errors)}")
    rep.check("server alive after", alive, "GET /health" + (" 200" if alive else " failed"))
    return rep


# ---- entry --------------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[ChaosConfig], Report]] = {
    "overload": overload,
    "drain": drain,
    "engine-fault": engine_fault,
    "slow-clients": slow_clients,
}


def run_scenario(name: str, cfg: ChaosConfig) -> dict[str, Any]:
    """Runs one scenario and returns its report (JSON-ready)."""
    if name not in RUNNERS:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    t0 = time.perf_counter()
    rep = RUNNERS[name](cfg)
    rep.seconds = time.perf_counter() - t0
    return rep.to_dict()


def format_chaos(rep: dict[str, Any]) -> str:
    """The terminal table of one scenario: the counts per phase, then each check."""
    phases = list(rep["requests"])
    keys = [
        "sent",
        "by_status",
        "5xx",
        "connection_errors",
        "lost",
        "admitted_p50_ms",
        "admitted_p99_ms",
    ]
    rows = []
    for k in keys:
        vals = [rep["requests"][p][k] for p in phases]
        rows.append(
            [k.replace("_", " "), *(json.dumps(v) if isinstance(v, dict) else fmt(v) for v in vals)]
        )
    out = [f"== chaos: {rep['scenario']} ({rep['seconds']:.0f} s) ==", table(rows, ["", *phases])]
    width = max(len(c["name"]) for c in rep["checks"]) if rep["checks"] else 0
    out.append(
        "\n".join(
            f"{'ok' if c['ok'] else 'FAIL':<4}  {c['name']:<{width}}  {c['detail'][:160]}"
            for c in rep["checks"]
        )
    )
    out.append(("PASS" if rep["passed"] else "FAIL") + f": {rep['reason']}")
    return "\n\n".join(out)
