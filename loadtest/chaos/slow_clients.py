"""``slow-clients``: hundreds of idle, header-trickling and body-trickling connections next to
normal traffic. Normal clients all get 200, not starved: within the SLO or within what the
same arrivals took with no slow connection (a control run first); and the server closes every
slow connection within its header / body read timeout (``SLIMRANK_HEADER_TIMEOUT_S``,
``SLIMRANK_BODY_TIMEOUT_S``). The slow connections come from a process of their own, so their
client-side work does not delay the normal clients' measurement.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import httpx

from loadtest.chaos.harness import (
    REQUEST_TIMEOUT_S,
    RUN_KEY,
    ChaosConfig,
    Report,
    request_pool,
    run_config,
    say,
    server,
    tally,
    unloaded_latency,
)
from loadtest.client import open_loop
from loadtest.stats import fmt


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


def _noop() -> None:
    return None


def _slow_crowd(host: str, port: int, counts: dict[str, int], gap_s: float, stop_s: float):
    """Every slow connection at once, in the calling process's own event loop."""

    async def crowd():
        return await asyncio.gather(*(_slow_connection(host, port, kind, gap_s, stop_s)
                                      for kind, k in counts.items() for _ in range(k)))  # fmt: skip

    return asyncio.run(crowd())


def slow_clients(cfg: ChaosConfig) -> Report:
    rep = Report("slow-clients", asdict(cfg))
    header_timeout = body_timeout = cfg.pick(10.0, 2.0)
    counts = {"idle": cfg.pick(300, 60), "headers": cfg.pick(100, 20), "body": cfg.pick(100, 20)}
    env = {
        "SLIMRANK_HEADER_TIMEOUT_S": str(header_timeout),
        "SLIMRANK_BODY_TIMEOUT_S": str(body_timeout),
        # admission is the overload scenario's subject: lifted here, every normal request is
        # admitted, so starvation shows in its latency instead of hiding behind a 429
        "SLIMRANK_MAX_EXPECTED_LATENCY_MS": str(REQUEST_TIMEOUT_S * 1000),
    }
    slack = 2.0
    stop_s = header_timeout + body_timeout + 2 * slack
    with server(cfg, env) as srv:
        pool = request_pool(cfg)
        base = unloaded_latency(srv.url, pool, cfg.pick(20, 8))
        # normal traffic well under capacity (half the one-at-a-time rate, at most 4 req/s): a
        # 429 here is overload, not starvation, and would hide what the scenario measures
        p50_s = base["p50"] / 1000 if base["p50"] > 0 else 1.0
        rate = min(cfg.pick(4.0, 3.0), 0.5 / p50_s)
        rc = run_config(cfg, srv.url, rate, stop_s)
        say(
            cfg,
            f"slow-clients: {sum(counts.values())} slow connections, {rate:g} req/s normal traffic for {stop_s:g}s",
        )

        async def scenario():
            # the control: the same arrivals (same seed) with no slow connection, so what the
            # slow connections cost is told apart from the normal traffic's own queueing
            control = await open_loop(rc, pool)
            # the slow crowd runs in its own process: in this one, its event-loop work would
            # delay the normal clients' own reads and be counted as the server's latency
            loop = asyncio.get_running_loop()
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
                await loop.run_in_executor(ex, _noop)  # the worker is up before the clock
                crowd = loop.run_in_executor(
                    ex, _slow_crowd, "127.0.0.1", srv.port, counts, 0.5, stop_s
                )
                await asyncio.sleep(1.0)  # the slow connections are open before normal traffic
                normal = await open_loop(rc, pool)
                return control, normal, await crowd

        control, normal, slow = asyncio.run(scenario())
        with httpx.Client(timeout=10) as c:
            alive = c.get(srv.url + "/health").status_code == 200
    rep.tallies["alone"] = alone_t = tally(control.outcomes)
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
        alone_p99_ms=alone_t["admitted_p99_ms"],
        within_slo=bool(t["admitted_p99_ms"] <= cfg.slo_ms),
        normal_rate=rate,
        slow_connections=counts,
        timeouts_s={"header": header_timeout, "body": body_timeout},
        held_open_past_timeout=dict(held),
        slow_connect_errors=dict(errors),
        slow_answers=dict(Counter(str(s["status"]) for s in slow if s["status"] is not None)),
    )
    p99, alone = t["admitted_p99_ms"], alone_t["admitted_p99_ms"]
    bad = {k: v for k, v in t["by_status"].items() if k != "200"}
    rep.check("normal clients all get 200", not bad and t["sent"] > 0, f"statuses {t['by_status']}")
    # not starved: within the SLO, or within what the same arrivals took with no slow
    # connection (+10% and 25 ms: two runs of one open-loop schedule differ by about that), or
    # on a machine too slow for the SLO even unloaded, within 2x the unloaded p99
    bound = cfg.slo_ms
    if not math.isnan(alone):
        bound = max(bound, alone * 1.1 + 25)
    if not math.isnan(base["p99"]):
        bound = max(bound, 2 * base["p99"])
    rep.check(
        "normal clients not starved",
        not math.isnan(p99) and p99 <= bound,
        f"p99 {fmt(p99)} ms vs {bound:.0f} ms (SLO {cfg.slo_ms:g} ms; the same arrivals alone "
        f"p99 {fmt(alone)} ms; unloaded p99 {fmt(base['p99'])} ms)",
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
