"""The load generators: an open-loop runner (the load test) and a closed-loop one (benchmarks).

Open loop, because that is how traffic arrives: requests are sent at Poisson arrival times
drawn up front (seeded), whether or not earlier ones have come back, so a slow server cannot
slow the clock. Latency is measured from each request's *scheduled* send time, not from when
the client got round to sending it: if the client falls behind (in-flight cap reached, event
loop late), that wait is in the numbers instead of hidden (coordinated omission). The send lag
itself is reported too, so a client that could not keep up is visible.

Bounded: at most ``max_requests``, no new request after ``duration_s``, and a hard stop at
``duration_s + grace_s``; a request still in flight then counts as ``not_completed``, one that
never got an in-flight slot as ``not_sent``. Both are failures in the goodput, never dropped.

Errors by type: ``http_<status>:<error.type>`` from the server's JSON error body,
``timeout``, ``connect_error``, ``transport_error:<exception>``, ``not_completed``,
``not_sent``. Goodput: the share of *scheduled* requests that returned 200 within the SLO.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp
import numpy as np
from tqdm import tqdm

from loadtest import promscrape
from loadtest.stats import Timings, fmt, percentiles, table
from loadtest.workload import RequestPool

MAX_SCHEDULE = 5_000_000  # arrival times held in memory at once (40 MB)


@dataclass(frozen=True)
class RunConfig:
    url: str  # server base URL (http://host:port)
    rate: float  # offered requests per second
    duration_s: float  # no request is scheduled after this
    slo_ms: float | None = None  # latency SLO for goodput
    max_requests: int | None = None
    max_in_flight: int = 256
    timeout_s: float = 30.0  # per request
    grace_s: float | None = None  # after duration_s, for in-flight requests (None: timeout_s)
    arrivals: Literal["poisson", "constant"] = "poisson"
    seed: int = 0
    path: str = "/v1/rank"
    progress: bool = True
    scrape_metrics: bool = True
    api_key: str | None = field(default=None, repr=False)  # Bearer key (never in reports)

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of requests/s, got {self.rate}")
        if not self.duration_s > 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration_s}")
        if self.slo_ms is not None and not self.slo_ms > 0:
            raise ValueError(f"the SLO must be > 0 ms, got {self.slo_ms}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be > 0 s, got {self.timeout_s}")
        if self.grace_s is not None and self.grace_s < 0:
            raise ValueError(f"grace must be >= 0 s, got {self.grace_s}")
        if self.arrivals not in ("poisson", "constant"):
            raise ValueError(f"arrivals must be 'poisson' or 'constant', not {self.arrivals!r}")

    @property
    def grace(self) -> float:
        return self.timeout_s if self.grace_s is None else self.grace_s


def arrival_times(
    rate: float,
    duration_s: float,
    max_requests: int | None = None,
    arrivals: str = "poisson",
    seed: int = 0,
) -> np.ndarray:
    """Send times in seconds from the start, all < ``duration_s``, at most ``max_requests``.

    Poisson: exponential gaps with mean 1/rate (memoryless arrivals, as from many independent
    users); constant: one every 1/rate s starting at 0. Seeded, so a run can be repeated."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    expected = rate * duration_s
    cap = max_requests if max_requests is not None else MAX_SCHEDULE
    if max_requests is None and expected > MAX_SCHEDULE:
        raise ValueError(
            f"rate x duration = {expected:.0f} requests; above {MAX_SCHEDULE} give --max-requests"
        )
    if arrivals == "constant":
        t = np.arange(0.0, min(duration_s, cap / rate), 1.0 / rate)
    else:
        rng = np.random.default_rng(seed)
        chunk = int(min(expected, cap) + 6 * math.sqrt(min(expected, cap)) + 16)
        t = np.cumsum(rng.exponential(1.0 / rate, size=chunk))
        while t[-1] < duration_s and len(t) < cap:  # rare: draw more
            t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, size=chunk))])
        t = t[t < duration_s]
    return t[:cap]


@dataclass
class Outcome:
    """One scheduled request; times in seconds from the start of the run."""

    scheduled_s: float
    items: int
    sent_s: float | None = None
    done_s: float | None = None
    status: int | None = None
    error: str | None = None  # None: a 200 response
    headers: dict[str, str] | None = None  # the response headers named in keep_headers

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200

    @property
    def latency_s(self) -> float | None:
        """From the scheduled send time (coordinated-omission safe)."""
        return None if self.done_s is None else self.done_s - self.scheduled_s


def classify_body(status: int, body: bytes) -> str:
    """``http_<status>:<type>`` using the server's ``{"error": {"type"}}`` body when present."""
    try:
        kind = json.loads(body)["error"]["type"]
        return f"http_{status}:{kind}"
    except (ValueError, KeyError, TypeError):
        return f"http_{status}"


def classify(response) -> str:
    """``classify_body`` of a response object with ``status_code`` and ``content`` (httpx,
    requests, locust)."""
    return classify_body(response.status_code, response.content)


def _session(url: str, connections: int, timeout_s: float, headers: dict) -> aiohttp.ClientSession:
    """The generators' HTTP client. aiohttp, not httpx: on a 2-core machine the client shares
    the CPU with the server it measures, and aiohttp's round trip costs about 1 ms less than
    httpx's AsyncClient (measured against our server on the standard request: 1.1 ms against
    2.3 ms over the server's own time); that CPU would otherwise count as the server's.
    ``connections``: the in-flight cap is the caller's, so the pool never makes a request wait.
    """
    return aiohttp.ClientSession(
        base_url=url,
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s),
        headers=headers,
    )


@dataclass
class RunResult:
    config: RunConfig
    outcomes: list[Outcome]
    window_s: float  # the send window: duration, or the last send time when max_requests cut it
    workload: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return summarize(self)


async def open_loop(
    cfg: RunConfig, pool: RequestPool, keep_headers: tuple[str, ...] = ()
) -> RunResult:
    """Runs one open-loop load test (see the module docstring) and returns every outcome;
    ``keep_headers`` (e.g. ``retry-after``) are kept on each outcome that carried them."""
    times = arrival_times(cfg.rate, cfg.duration_s, cfg.max_requests, cfg.arrivals, cfg.seed)
    requests = pool.sequence(len(times))
    outcomes = [Outcome(float(t), r.items) for t, r in zip(times, requests, strict=True)]
    truncated = cfg.max_requests is not None and len(times) == cfg.max_requests
    window = float(times[-1]) if truncated and len(times) else cfg.duration_s

    before = promscrape.scrape(cfg.url, api_key=cfg.api_key) if cfg.scrape_metrics else None
    slots = asyncio.Semaphore(cfg.max_in_flight)
    bar = tqdm(total=len(times), unit="req", disable=not cfg.progress, leave=False)
    errors: Counter[str] = Counter()
    headers = {"content-type": "application/json", **promscrape.auth_headers(cfg.api_key)}

    async with _session(cfg.url, cfg.max_in_flight, cfg.timeout_s, headers) as client:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            o = outcomes[i]
            try:
                async with slots:
                    o.sent_s = time.perf_counter() - t0
                    try:
                        async with client.post(cfg.path, data=requests[i].body) as r:
                            body = await r.read()
                        o.status = r.status
                        if keep_headers:
                            o.headers = {h: r.headers[h] for h in keep_headers if h in r.headers}
                        if r.status != 200:
                            o.error = classify_body(r.status, body)
                    except TimeoutError:
                        o.error = "timeout"
                    except aiohttp.ClientConnectorError:
                        o.error = "connect_error"
                    except aiohttp.ClientError as exc:
                        o.error = f"transport_error:{type(exc).__name__}"
                    o.done_s = time.perf_counter() - t0
            finally:
                if o.error:
                    errors[o.error.split(":")[0]] += 1
                    bar.set_postfix(errors=sum(errors.values()), refresh=False)
                bar.update(1)

        tasks: list[asyncio.Task] = []
        hard_stop = t0 + cfg.duration_s + cfg.grace
        for i, t in enumerate(times):
            delay = t0 + float(t) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        if tasks:
            _, pending = await asyncio.wait(
                tasks, timeout=max(0.0, hard_stop - time.perf_counter())
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for o in outcomes:  # cancelled at the hard stop: failures, counted honestly
            if o.done_s is None:
                o.error = "not_completed" if o.sent_s is not None else "not_sent"
    bar.close()
    after = promscrape.scrape(cfg.url, api_key=cfg.api_key) if cfg.scrape_metrics else None
    result = RunResult(cfg, outcomes, window, workload=pool.workload.describe())
    if pool.lengths:
        result.workload["measured"] = pool.lengths
    result.server = promscrape.server_report(before, after)
    return result


def run(cfg: RunConfig, pool: RequestPool, keep_headers: tuple[str, ...] = ()) -> RunResult:
    return asyncio.run(open_loop(cfg, pool, keep_headers))


def summarize(res: RunResult) -> dict[str, Any]:
    """The report of one run (JSON-ready)."""
    cfg, outs = res.config, res.outcomes
    sent = [o for o in outs if o.sent_s is not None]
    ok = [o for o in outs if o.ok]
    finished = [o.done_s for o in outs if o.done_s is not None]
    elapsed = max([res.window_s, *finished]) if outs else res.window_s
    lat_ms = [o.latency_s * 1000 for o in ok]
    errors = Counter(o.error for o in outs if o.error)
    good = None
    if cfg.slo_ms is not None:
        within = sum(1 for x in lat_ms if x <= cfg.slo_ms)
        good = {
            "slo_ms": cfg.slo_ms,
            "within_slo": within,
            "goodput": within / len(outs) if outs else math.nan,
            "goodput_rps": within / elapsed,
            "meets_slo": bool(outs) and within / len(outs) >= 0.99,
        }
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "api_key")},
        "workload": res.workload,
        "requests": {
            "scheduled": len(outs),
            "sent": len(sent),
            "completed": sum(1 for o in outs if o.status is not None),
            "ok": len(ok),
            "failed": len(outs) - len(ok),
        },
        "offered_rate": cfg.rate,
        "schedule_rate": len(outs) / res.window_s,
        "achieved_rate": len(sent) / res.window_s,
        "elapsed_s": elapsed,
        "throughput_rps": len(ok) / elapsed,
        "items_per_s": sum(o.items for o in ok) / elapsed,
        "latency_ms": percentiles(lat_ms),
        "send_lag_ms": percentiles([(o.sent_s - o.scheduled_s) * 1000 for o in sent]),
        "errors": dict(sorted(errors.items())),
        "slo": good,
        "server": res.server,
    }


def format_report(s: dict[str, Any]) -> str:
    """The terminal table of one run."""
    req, lat = s["requests"], s["latency_ms"]
    rows = [
        ["offered rate (req/s)", fmt(s["offered_rate"], 2)],
        ["scheduled rate (this Poisson draw)", fmt(s["schedule_rate"], 2)],
        ["achieved send rate (req/s)", fmt(s["achieved_rate"], 2)],
        [
            "requests scheduled / sent / ok",
            f"{req['scheduled']} / {req['sent']} / {req['ok']}",
        ],
        ["throughput (ok req/s)", fmt(s["throughput_rps"], 2)],
        ["items/s", fmt(s["items_per_s"], 1)],
    ]
    for k in ("p50", "p90", "p95", "p99", "max"):
        rows.append([f"latency {k} (ms, from scheduled send)", fmt(lat[k])])
    rows.append(["send lag p99 (ms)", fmt(s["send_lag_ms"]["p99"])])
    if s["slo"]:
        g = s["slo"]
        verdict = "meets" if g["meets_slo"] else "misses"
        rows.append(
            [f"goodput (ok within {g['slo_ms']:g} ms)", f"{g['goodput']:.1%} ({verdict} SLO)"]
        )
    for k, v in s["errors"].items():
        rows.append([f"error {k}", str(v)])
    srv = s["server"]
    if srv:
        for name in ("prefill_ms", "queue_wait_ms", "request_duration_ms"):
            h = srv.get(name)
            if h:
                rows.append(
                    [
                        f"server {name[:-3].replace('_', ' ')} p50/p90/p99 (ms)",
                        f"{fmt(h['p50'])} / {fmt(h['p90'])} / {fmt(h['p99'])}",
                    ]
                )
        rows.append(["server requests by status", json.dumps(srv["requests_by_status"])])
    elif s["config"].get("scrape_metrics"):
        rows.append(["server metrics", "no /metrics (not a slimrank server?)"])
    return table(rows, ["metric", "value"])


# ---- closed loop: fixed concurrency, for benchmarks --------------------------------------------
async def closed_loop(
    url: str,
    body: dict | list[dict],
    n: int,
    concurrency: int,
    path: str = "/v1/rank",
    api_key: str | None = None,
    start: int = 0,
) -> Timings:
    """The throughput and latency of the server at ``concurrency`` (not a rate test): ``n``
    requests (bodies cycled from index ``start``), each sent when a slot frees. Raw timings,
    so turns can be summed (``Timings.summary`` gives the row)."""
    bodies = body if isinstance(body, list) else [body]
    out = Timings(n=n)
    encoded = [json.dumps(b).encode() for b in bodies]  # serialized once, as open_loop's are
    headers = {"content-type": "application/json", **promscrape.auth_headers(api_key)}
    async with _session(url, concurrency, 300, headers) as c:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            k = (start + i) % len(bodies)
            async with sem:
                t = time.perf_counter()
                async with c.post(path, data=encoded[k]) as r:
                    body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{path} answered {classify_body(r.status, body)}")
                out.lat_ms.append((time.perf_counter() - t) * 1000)
                out.items += len(bodies[k].get("items") or bodies[k].get("documents") or [])

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        out.wall_s = time.perf_counter() - t0
    return out
