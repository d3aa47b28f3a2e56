"""``drain``: steady load at ~70 % of capacity, then SIGTERM. Requests admitted before it end
in 200; later ones get a 503 in the error shape with ``Connection: close`` (never a refused or
reset connection), ``/ready`` turns 503, and the server exits after its drain window
(``SLIMRANK_DRAIN_WINDOW_S``) and within its grace period. 0 lost.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict

import httpx

from loadtest.chaos.harness import (
    REQUEST_TIMEOUT_S,
    ChaosConfig,
    Report,
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

CLEAN_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled once it is done
# a request sent less than this before SIGTERM may reach the server after it
IN_FLIGHT_S = 0.5


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
        pool = request_pool(cfg)
        cap = measure_capacity(cfg, srv.url, pool, unloaded_latency(srv.url, pool, cfg.pick(20, 8)))
        before_s = cfg.pick(10.0, 3.0)
        after_s = 0.8 * window  # arrivals stop inside the drain window: the server is still up
        # ~70 % of capacity, but at least a few arrivals after the signal on a slow machine
        rate = max(0.7 * cap["capacity_rps"], 5 / after_s)
        say(cfg, f"drain: {rate:.1f} req/s, SIGTERM after {before_s:g}s, window {window:g}s")
        rc = run_config(cfg, srv.url, rate, before_s + after_s)
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
