"""``overload``: capacity from a short rate sweep (the highest rate meeting the SLO), then 3x
that rate, with the shipped settings. Admitted requests keep p99 within the SLO, the rest get
429 with ``Retry-After``, 0 5xx, 0 connection errors, and latency is back to the unloaded level
within 5 s of the burst's end.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import asdict

import httpx

from loadtest.chaos.harness import (
    AUTH,
    REQUEST_TIMEOUT_S,
    TIMING_HEADERS,
    ChaosConfig,
    Report,
    latency_parts,
    measure_capacity,
    request_pool,
    run_config,
    say,
    server,
    tally,
    unloaded_latency,
)
from loadtest.client import open_loop
from loadtest.stats import fmt


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
        pool = request_pool(cfg)
        base = unloaded_latency(srv.url, pool, cfg.pick(20, 8))
        cap = measure_capacity(cfg, srv.url, pool, base)
        rate = 3 * cap["capacity_rps"]
        duration = cfg.pick(60.0, 5.0)
        recovery_window = cfg.pick(10.0, 6.0)
        say(
            cfg,
            f"overload: capacity {cap['capacity_rps']:.1f} req/s, burst {rate:.1f} req/s for {duration:g}s",
        )
        rc = run_config(cfg, srv.url, rate, duration)
        body = pool.sequence(1)[0].body

        async def both():
            return await asyncio.gather(
                open_loop(rc, pool, keep_headers=("retry-after", *TIMING_HEADERS)),
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
        admitted_parts_ms=latency_parts(result.outcomes),
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
